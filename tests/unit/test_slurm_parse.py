from clusterkit.launch.slurm import CommandResult, controller_answers, job_states, parse_sacct, parse_sinfo_nodes, parse_squeue


class FakeSlurm:
    """Recorded Slurm client output; records every call so tests can count them."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def __call__(self, argv, timeout):
        self.calls.append(argv)
        return self.outputs.get(argv[0], CommandResult(127, "", f"{argv[0]}: command not found"))


def test_parse_squeue():
    assert parse_squeue("12|RUNNING\n13|PENDING\n14|COMPLETING\n15|CANCELLED by 0\n") == {
        "12": "RUNNING", "13": "PENDING", "14": "RUNNING", "15": "CANCELLED"}


def test_parse_sacct_ignores_steps():
    text = "12|COMPLETED\n12.batch|COMPLETED\n12.0|COMPLETED\n13|FAILED\n14|CANCELLED by 0\n"
    assert parse_sacct(text) == {"12": "COMPLETED", "13": "FAILED", "14": "CANCELLED"}


def test_parse_sinfo():
    text = "worker-5|idle|gpu:rtx_a6000:8|gpu*\nworker-8|mixed|gpu:rtx4090:2|gpu*\nworker-8|mixed|gpu:rtx4090:2|debug\n"
    nodes = parse_sinfo_nodes(text)
    assert nodes["worker-5"] == {"state": "idle", "gres": "gpu:rtx_a6000:8", "partitions": ["gpu"]}
    assert nodes["worker-8"]["partitions"] == ["gpu", "debug"]


def test_one_squeue_call_for_all_jobs_and_sacct_fallback_without_accounting():
    fake = FakeSlurm({
        "squeue": CommandResult(0, "1|RUNNING\n2|PENDING\n", ""),
        "sacct": CommandResult(1, "", "sacct: error: Slurm accounting storage is disabled\n"),
    })
    states, notes = job_states(["1", "2", "3", "1"], runner=fake)
    assert states == {"1": "RUNNING", "2": "PENDING"}  # 3 is unknown to both: caller uses result files
    assert [c[0] for c in fake.calls] == ["squeue", "sacct"]  # one call each, not one per job
    assert fake.calls[0][-1] == "1,2,3"
    assert "accounting storage is disabled" in notes[0]


def test_sacct_fills_in_finished_jobs():
    fake = FakeSlurm({"squeue": CommandResult(0, "1|RUNNING\n", ""), "sacct": CommandResult(0, "2|COMPLETED\n", "")})
    assert job_states(["1", "2"], runner=fake)[0] == {"1": "RUNNING", "2": "COMPLETED"}


def test_controller_answers():
    assert controller_answers(FakeSlurm({"scontrol": CommandResult(0, "Slurmctld(primary) at localhost is UP\n", "")}))
    assert not controller_answers(FakeSlurm({"scontrol": CommandResult(1, "", "DOWN")}))
    assert not controller_answers(FakeSlurm({}))  # not installed
