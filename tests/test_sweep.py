"""Sweeps (`spec-harness sweep`): a grid of runs cut into shards, each with every method, the
baseline and the A/A control; the local executor and a local Ray cluster give the same records as
`run`; a worker killed mid-shard has its shard retried, every record written once; a driver killed
between shards resumes without decoding a finished shard again; a bad file is refused before any
worker starts; `report` on a sweep and on a point."""

import json

import pytest
from click.testing import CliRunner

from harness.bench.records_io import key_of, read_records
from harness.bench.request import run_config
from harness.bench.runner import Runner
from harness.cli import main
from harness.sweep.driver import prepare, run_sweep
from harness.sweep.executors import LocalExecutor, RayExecutor
from harness.sweep.spec import SweepError

ray = pytest.importorskip("ray")


def sweep_file(tmp_path, model_dir, grid='temperature = ["0", "1"]', shard_size=2, extra=""):
    path = tmp_path / "sweep.toml"
    path.write_text(f'''out = "{tmp_path / 'out'}"
shard_size = {shard_size}
{extra}
[run]
model = "{model_dir}"
methods = "pld"
datasets = "gsm8k"
num-samples = 4
max_new_tokens = 6
control = true
telemetry = false
warmup = false
device = "cpu"

[grid]
{grid}
''')
    return path


def raw_keys(point_dir):
    """Every record line's key as written (read_records would hide a repeated one)."""
    return [key_of(json.loads(line)) for line in (point_dir / "records.jsonl").read_text().splitlines()]


def outputs(records):
    return {key_of(r): r["output_ids"] for r in records}


@pytest.fixture(scope="module")
def local_sweep(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    sweep = prepare(sweep_file(tmp, tiny_model_dir))
    result = run_sweep(sweep, LocalExecutor(), progress=False)
    return sweep, result


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_sweep_is_its_runs_cut_into_shards(local_sweep, tmp_path):
    sweep, result = local_sweep
    assert [p.name for p in sweep.points] == ["temperature=0", "temperature=1"] and result.shards == 4
    for point in sweep.points:
        merged = read_records(point.out(sweep.out) / "records.jsonl")
        cfg = run_config(out=tmp_path / point.name, **point.options)
        alone = read_records(Runner(cfg, progress=False).run() / "records.jsonl")
        assert outputs(merged) == outputs(alone)  # the same keys and outputs as `run`
        assert {r["method"] for r in merged} == {"ar", "pld", "ar:control"}
        ledger = json.loads((point.out(sweep.out) / "manifest.json").read_text())["sweep"]["shards"]
        assert sorted(ledger) == [f"{point.name}/gsm8k/0", f"{point.name}/gsm8k/1"]
        for shard_id, entry in ledger.items():  # each shard: all methods paired within its own session
            mine = [r for r in merged if r["shard"] == shard_id]
            assert {r["session"] for r in mine} == {entry["session"]} and len({r["sample_id"] for r in mine}) == 2
            assert entry["host"] and entry["hardware"]["cpu"] and entry["git"]


def test_ray_gives_the_records_of_the_local_executor(local_sweep, tiny_model_dir, tmp_path, ray_cluster):
    sweep, _ = local_sweep
    on_ray = prepare(sweep_file(tmp_path, tiny_model_dir))
    result = run_sweep(on_ray, RayExecutor(workers=2), progress=False)
    assert sorted(result.run) == sorted(s for p in sweep.points for s in (f"{p.name}/gsm8k/0", f"{p.name}/gsm8k/1"))
    assert len(result.overhead) == 4 and all(o >= 0 for o in result.overhead)
    for point in sweep.points:
        local = read_records(point.out(sweep.out) / "records.jsonl")
        remote = read_records(point.out(on_ray.out) / "records.jsonl")
        assert outputs(remote) == outputs(local)


def test_a_worker_killed_mid_shard_has_its_shard_retried_and_written_once(tiny_model_dir, tmp_path, ray_cluster):
    killed = []

    def kill_first(actor, shard):
        if not killed:
            killed.append(shard.id)
            ray.kill(actor)

    sweep = prepare(sweep_file(tmp_path, tiny_model_dir, grid='temperature = ["0"]'))
    result = run_sweep(sweep, RayExecutor(workers=1, on_submit=kill_first), progress=False)
    assert killed and result.run.count(killed[0]) == 1 and len(result.run) == 2
    keys = raw_keys(sweep.points[0].out(sweep.out))
    assert len(keys) == len(set(keys)) == 3 * 4  # 3 methods x 4 samples, each once


class DiesAfterOne(LocalExecutor):
    """The driver killed after its first shard was merged."""

    def run(self, shards):
        for i, item in enumerate(super().run(shards)):
            if i == 1:
                raise KeyboardInterrupt
            yield item


def test_a_resumed_sweep_decodes_no_finished_shard_again(tiny_model_dir, tmp_path):
    path = sweep_file(tmp_path, tiny_model_dir, grid='temperature = ["0"]')
    with pytest.raises(KeyboardInterrupt):
        run_sweep(prepare(path), DiesAfterOne(), progress=False)
    point = prepare(path, resume=True).points[0].out(tmp_path / "out")
    first = {r["shard"]: r["session"] for r in read_records(point / "records.jsonl")}
    assert list(first) == ["temperature=0/gsm8k/0"]
    with pytest.raises(Exception, match="already holds"):  # without --resume: refused, nothing lost
        prepare(path)
    result = run_sweep(prepare(path, resume=True), LocalExecutor(), resume=True, progress=False)
    assert result.run == ["temperature=0/gsm8k/1"]
    records = read_records(point / "records.jsonl")
    assert {r["session"] for r in records if r["shard"] == "temperature=0/gsm8k/0"} == {first["temperature=0/gsm8k/0"]}
    assert len(raw_keys(point)) == len(set(raw_keys(point))) == 12


def test_records_of_a_shard_the_ledger_lacks_are_dropped_and_decoded_again(tiny_model_dir, tmp_path):
    path = sweep_file(tmp_path, tiny_model_dir, grid='temperature = ["0"]')
    run_sweep(prepare(path), LocalExecutor(), progress=False)
    point = tmp_path / "out" / "temperature=0"
    manifest = json.loads((point / "manifest.json").read_text())
    del manifest["sweep"]["shards"]["temperature=0/gsm8k/1"]  # the driver died between the two writes
    (point / "manifest.json").write_text(json.dumps(manifest))
    result = run_sweep(prepare(path, resume=True), LocalExecutor(), resume=True, progress=False)
    assert result.run == ["temperature=0/gsm8k/1"]
    assert len(raw_keys(point)) == len(set(raw_keys(point))) == 12


@pytest.mark.parametrize("grid, extra, shard_size, message", [
    ('temperature = ["0"]\nbeam = [2]', "", 2, "beam: not an option of `spec-harness run`"),
    ('method_arg = [["nope.k=3"]]', "", 2, "grid point method_arg=nope.k=3: --method-arg names method"),
    ('batch_size = ["1,4"]', "", 2, "shard_size 2 is not a multiple of batch size 4"),
    ('temperature = "0"', "", 2, "expected a non-empty list"),
    ('temperature = ["0"]', "workers = 3", 2, "unknown key"),
    ('temperature = ["0"]', "", 0, "shard_size = 0"),
])
def test_a_bad_sweep_file_is_refused_before_any_worker_starts(tiny_model_dir, tmp_path, grid, extra, shard_size,
                                                              message):
    path = sweep_file(tmp_path, tiny_model_dir, grid=grid, shard_size=shard_size, extra=extra)
    with pytest.raises(SweepError, match=message):
        prepare(path)
    if ray.is_initialized():
        ray.shutdown()
    res = CliRunner().invoke(main, ["sweep", str(path), "--executor", "ray"])
    assert res.exit_code == 2 and message.split(":")[0] in res.output and not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_report_of_a_sweep_has_a_table_per_dimension_and_a_point_says_it_pooled(local_sweep):
    sweep, _ = local_sweep
    res = CliRunner().invoke(main, ["report", str(sweep.out)])
    assert res.exit_code == 0, res.output
    assert "speedup by temperature" in res.output and "ar:control" in res.output and "temperature=1" in res.output
    res = CliRunner().invoke(main, ["report", str(sweep.points[0].out(sweep.out))])
    assert res.exit_code == 0 and "2 shard(s) of a sweep, pooled: all on identical hardware" in res.output
