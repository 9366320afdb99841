"""The benchmarks' own yardsticks still fit the schema they measure (the benchmarks themselves are timed, and
run by `make bench`, not here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from bench.bare_stages import BareStages
from bench.pg_throughput import UNCHAINED_TABLE, unchained_append_many, unchained_table
from provisioning import aws
from provisioning.audit import NewEvent, audit_append, audit_chain_pending, audit_head, audit_unchained
from provisioning.models import AuditEvent


@pytest.mark.django_db
def test_the_unchained_baseline_writes_the_same_rows_beside_the_log_and_the_sequencer_goes_on():
    from django.db import connection

    audit_append(kind="vend_claimed", actor="device", serial="SN-BEFORE", data={})
    audit_chain_pending()
    head = audit_head()
    events = [
        NewEvent(kind="vend_claimed", actor="device", serial=f"SN-{i}", data={"key_origin": "aws"}) for i in range(3)
    ]

    unchained_table()
    with transaction.atomic():
        unchained_append_many(events)

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT serial, kind, data, hash FROM {UNCHAINED_TABLE} ORDER BY seq")  # noqa: S608
        rows = cursor.fetchall()
    assert [(serial, kind, json.loads(data) if isinstance(data, str) else data) for serial, kind, data, _ in rows] == [
        (e.serial, e.kind, e.data) for e in events
    ]
    assert len({row[3] for row in rows}) == 3
    assert not AuditEvent.objects.filter(serial__startswith="SN-").exclude(serial="SN-BEFORE").exists()
    assert (audit_head().seq, audit_head().head) == (head.seq, head.head)
    # What a chained round after an unchained one needs: the sequencer still chains (it used to stop,
    # taking the yardstick's rows for a rewritten history).
    audit_append(kind="vend_claimed", actor="device", serial="SN-AFTER", data={})
    assert audit_chain_pending() == 1
    assert audit_unchained()[0] == 0


def test_update_replaces_the_measured_sections_and_rows_and_keeps_the_rest():
    from bench.run import DESCRIPTIONS, updated

    document = "\n".join([
        "# Benchmarks", "", "Measured by `make bench` on 2026-01-01.", "",
        "| benchmark | target | met |", "|---|---|---|",
        "| `vend` | old target | **no** |", "| `flood` | flood target | yes |", "",
        "## `vend`", "", "old description", "", "| figure | value |", "|---|---|", "| median ms | 9.00 |", "",
        "## `flood`", "", "flood description", "", "| figure | value |", "|---|---|", "| rows | 0 |", "",
        "## Before and after", "", "kept",
    ])  # fmt: skip
    vend = {"name": "vend", "target": "new target", "met": True, "figures": {"median ms": 2.0}}
    spray = {"name": "spray", "target": "spray target", "met": False, "figures": {"change %": -30.0}}

    lines = updated(document, [vend, spray], ("0.10 / 0.20 / 0.30", "0.40 / 0.50 / 0.60")).splitlines()

    assert "| `vend` | new target | yes |" in lines
    assert "| `flood` | flood target | yes |" in lines, "a row not measured again is kept"
    assert lines.index("| `spray` | spray target | **no** |") == lines.index("| `flood` | flood target | yes |") + 1
    assert "| median ms | 2.00 |" in lines
    assert "| median ms | 9.00 |" not in lines
    assert DESCRIPTIONS["vend"] in lines
    assert "| rows | 0 |" in lines, "a section not measured again is kept"
    assert lines.index("## `spray`") < lines.index("## Before and after")
    assert lines[-1] == "kept"
    (note,) = [line for line in lines if "measured again" in line]
    assert note.startswith("`vend`, `spray` measured again on ")
    assert "load average 0.10 / 0.20 / 0.30 at the start" in note


def test_an_unknown_benchmark_name_is_refused_before_anything_runs():
    import subprocess
    import sys

    from scripts.processes import ROOT

    for args in (["--update"], ["--update", "nope"], ["vend", "nope"]):
        result = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_bare_stages_make_the_aws_calls_of_a_vend(aws_mock):
    """`stages` subtracts bench.bare_stages from a vend: it must make the same AWS IoT calls as the portal."""

    def recorded(client: Any, work: Callable[[], object]) -> list[str]:
        operations: list[str] = []

        def record(model: Any, **_: Any) -> None:
            operations.append(model.name)

        client.meta.events.register("before-call.iot", record)
        try:
            work()
        finally:
            client.meta.events.unregister("before-call.iot", record)
        return sorted(operations)

    aws.iot_data_endpoint()  # the portal looks it up once per process
    policy = settings.CVM_IOT_POLICY_NAME
    portal = recorded(
        aws.iot_client(),
        lambda: aws.certificate_provision(
            thing_name="SN-1", attributes={"serial": "SN-1", "product": "p"}, csr_pem=None, policy_name=policy
        ),
    )
    bare_client = aws_mock.iot
    stages = BareStages(bare_client)
    try:
        bare = recorded(
            bare_client,
            lambda: stages.run(thing_name="SN-2", attributes={"serial": "SN-2", "product": "p"}, policy_name=policy),
        )
    finally:
        stages.close()

    assert bare == portal
    assert len(aws_mock.active_certificates()) == 2


def test_bench_run_reads_its_command_line_like_any_command(capsys):
    from bench.run import ALL, DESCRIPTIONS, arguments

    assert set(ALL) == set(DESCRIPTIONS), "every benchmark has a description, and `make bench` runs each"
    assert arguments(["vend", "flood", "vend"]).names == ["vend", "flood"]
    assert arguments(["--update", "spray"]).update
    for argv, said in (
        (["nosuch"], "unknown benchmark(s): nosuch"),
        (["--update"], "--update needs the names"),
        (["--slow", "vend"], "unrecognized arguments: --slow"),
    ):
        with pytest.raises(SystemExit) as exited:
            arguments(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert said in err
        assert len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exited:
        arguments(["--help"])
    assert exited.value.code == 0
    assert "--update" in capsys.readouterr().out


def test_ab_bulk_refuses_bad_input_in_one_line_before_it_runs_anything(tmp_path):
    import subprocess

    from scripts.processes import ROOT

    script = str(ROOT / "bench" / "ab_bulk.sh")
    for args in ([], [str(tmp_path), "."], [".", ".", "0"], [".", ".", "two"], [".", ".", "1", "2"]):
        result = subprocess.run([script, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not result.stdout, "nothing was run"
