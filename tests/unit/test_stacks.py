"""Where hung ranks wait, from stacks as faulthandler and py-spy print them (taken from
real dumps of tests/jobs/ranks.py --block-rank 3)."""

from trainfleet.agent.stacks import summarize

SITE = "/venv/lib/python3.11/site-packages"
FAULTHANDLER = f"""\
[tf:rank2] Current thread 0x00007f1ed3617b80 (most recent call first):
[tf:rank2]   File "{SITE}/torch/distributed/distributed_c10d.py", line 3252 in all_reduce
[tf:rank2]   File "{SITE}/torch/distributed/c10d_logger.py", line 83 in wrapper
[tf:rank2]   File "ranks.py", line 58 in main
[tf:rank2]   File "{SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367 in wrapper
[tf:rank2]   File "ranks.py", line 68 in <module>
[tf:rank2]   File "<frozen runpy>", line 88 in _run_code
[tf:rank2]   File "/tmp/trainfleet/.trainfleet/jobs/tf-1/rankwrap.py", line 225 in main
[tf:rank3] Current thread 0x00007fb2f1c7db80 (most recent call first):
[tf:rank3]   File "ranks.py", line 24 in block_forever
[tf:rank3]   File "ranks.py", line 50 in main
[tf:rank3]   File "{SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367 in wrapper
[tf:rank3]   File "ranks.py", line 68 in <module>
[tf:rank3]   File "/tmp/trainfleet/.trainfleet/jobs/tf-1/rankwrap.py", line 247 in <module>
""".splitlines()

PY_SPY = f"""\
[tf:rank2] py-spy dump of pid 7452:
[tf:rank2] Thread 7452 (idle): "MainThread"
[tf:rank2]     all_reduce ({SITE}/torch/distributed/distributed_c10d.py:3252)
[tf:rank2]     _exception_logger.<locals>.wrapper ({SITE}/torch/distributed/c10d_logger.py:83)
[tf:rank2]     main (ranks.py:58)
[tf:rank2]     record.<locals>.wrap.<locals>.wrapper ({SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py:367)
[tf:rank2]     <module> (ranks.py:68)
[tf:rank3] py-spy dump of pid 7245:
[tf:rank3] Thread 7245 (idle): "MainThread"
[tf:rank3]     block_forever (ranks.py:24)
[tf:rank3]     main (ranks.py:50)
[tf:rank3]     record.<locals>.wrap.<locals>.wrapper ({SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py:367)
[tf:rank3]     <module> (ranks.py:68)
[tf:rank3]     main (/tmp/trainfleet/.trainfleet/jobs/tf-1/rankwrap.py:225)
""".splitlines()

EXPECTED = "rank 2 in all_reduce (ranks.py:58); rank 3 in block_forever (ranks.py:24)"


def test_faulthandler_dumps_name_the_collective_and_the_blocking_function() -> None:
    assert summarize(FAULTHANDLER) == EXPECTED


def test_py_spy_dumps_read_the_same() -> None:
    assert summarize(PY_SPY) == EXPECTED


def test_ranks_waiting_alike_are_folded_and_other_lines_ignored() -> None:
    twice = FAULTHANDLER[:8] + [line.replace("rank2", "rank0") for line in FAULTHANDLER[:8]]
    assert summarize(["[tf:rank0] step 5 loss 2.1", "torchrun says hello", *twice]) == \
        "ranks 0,2 in all_reduce (ranks.py:58)"


def test_no_dump_gives_nothing() -> None:
    assert summarize(["[tf:rank0] step 5 loss 2.1"]) == ""


def test_a_rank_waiting_at_init_is_in_the_api_it_called_not_its_helper() -> None:
    """From a real py-spy dump of tests/runbooks/project/train.py --stuck-rank 3."""
    at_init = f"""\
[tf:rank0] py-spy dump of pid 1425:
[tf:rank0] Thread 1425 (idle): "MainThread"
[tf:rank0]     _new_process_group_helper ({SITE}/torch/distributed/distributed_c10d.py:2169)
[tf:rank0]     init_process_group ({SITE}/torch/distributed/distributed_c10d.py:1899)
[tf:rank0]     _time_logger.<locals>.wrapper ({SITE}/torch/distributed/c10d_logger.py:97)
[tf:rank0]     _exception_logger.<locals>.wrapper ({SITE}/torch/distributed/c10d_logger.py:83)
[tf:rank0]     <module> (train.py:65)
""".splitlines()
    assert summarize(at_init) == "rank 0 in init_process_group (train.py:65)"
