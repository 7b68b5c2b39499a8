"""Building what methods need before they run: the self-distillation corpus, the drafter training
loop and its losses' helpers, the self-speculative skip-set search, and tuning of training-free
methods' defaults on the training splits. Imports bench and core (and methods through the
registry), never analysis or cli.
"""
