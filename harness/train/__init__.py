"""Building what methods need before they run: the self-distillation corpus, the drafter training
loop and its losses' helpers, the self-speculative skip-set search, tuning of training-free
methods' defaults on the training splits, and acceptance profiles for planning draft shapes.
Imports bench and core (and methods through the registry), never analysis or cli.
"""
