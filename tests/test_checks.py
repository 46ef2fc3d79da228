"""The checker framework: references are refused while a student's function runs and always put back, a checker
prints one [PASS] line or graduated [FAIL] hints, and returns a bool."""
import pytest

import ftlab
import ftlab.align.dpo
import ftlab.measure
from ftlab import checks
from ftlab.checks import Problem, Refused, exercise, refusing


@pytest.fixture(autouse=True)
def fresh_attempts():
    checks.check_dpo_loss.exercise.attempts = 0
    toy.exercise.attempts = 0


@exercise("a toy exercise", task="doubling", where="the definition of doubling", sketch="return ____ * x")
def toy(call):
    got = call(3, case="x=3")
    return None if got == 6 else Problem(f"fn(3) gave {got}, expected 6")


def test_a_pass_prints_one_line_and_returns_true(capsys):
    assert toy(lambda x: 2 * x) is True
    assert capsys.readouterr().out == "[PASS] a toy exercise\n"


def test_a_function_that_raises_is_reported_with_its_case(capsys):
    assert toy(lambda x: 1 / 0) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] a toy exercise (attempt 1): x=3: calling it raised ZeroDivisionError")


def test_something_that_is_not_a_function_is_reported(capsys):
    assert toy(6) is False
    assert "expected a function, got int" in capsys.readouterr().out


def test_refusing_swaps_every_ftlab_binding_and_restores_them_after_an_error():
    original = ftlab.measure.memory_report
    student = {"memory_report": original, "other": len}
    with pytest.raises(ZeroDivisionError), refusing({"memory_report": original}, "the memory report", [student]):
        for where in (ftlab.measure.memory_report, ftlab.memory_report, student["memory_report"]):
            with pytest.raises(Refused, match="write it yourself: this exercise asks you to implement the memory"):
                where()
        assert student["other"] is len
        raise ZeroDivisionError("an error inside the block")
    assert ftlab.measure.memory_report is original and ftlab.memory_report is original
    assert student["memory_report"] is original


def student_namespace(source: str) -> dict:
    """Run ``source`` as a notebook cell would, in a namespace of its own, and return that namespace."""
    namespace = {}
    exec(compile(source, "<cell>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("source", [
    "from ftlab.align.dpo import dpo_loss\n\ndef mine(*args):\n    return dpo_loss(*args)[0]\n",
    "import ftlab.align.dpo\n\ndef mine(*args):\n    return ftlab.align.dpo.dpo_loss(*args)[0]\n",
    "def mine(*args):\n    from ftlab.align.dpo import dpo_loss\n    return dpo_loss(*args)[0]\n",
], ids=["imported name", "module attribute", "import inside the function"])
def test_a_student_function_calling_the_reference_fails_and_everything_is_restored(source, capsys):
    original = ftlab.align.dpo.dpo_loss
    namespace = student_namespace(source)
    assert checks.check_dpo_loss(namespace["mine"]) is False
    out = capsys.readouterr().out
    assert "write it yourself: this exercise asks you to implement the DPO loss" in out
    assert ftlab.align.dpo.dpo_loss is original
    assert namespace.get("dpo_loss", original) is original


def test_the_reference_is_restored_after_a_pass_and_after_a_raising_function(capsys):
    original = ftlab.align.dpo.dpo_loss
    namespace = student_namespace(
        "import torch.nn.functional as F\nfrom ftlab.align.dpo import dpo_loss\n\n"
        "def good(pc, pr, rc, rr, beta):\n    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()\n\n"
        "def broken(*args):\n    raise KeyError('oops')\n")
    assert checks.check_dpo_loss(namespace["good"]) is True
    assert checks.check_dpo_loss(namespace["broken"]) is False
    assert "KeyError" in capsys.readouterr().out
    assert ftlab.align.dpo.dpo_loss is original and namespace["dpo_loss"] is original


def test_the_reference_passed_directly_is_refused_without_calling_it(capsys):
    assert checks.check_dpo_loss(ftlab.align.dpo.dpo_loss) is False
    assert "that is ftlab's own function: write it yourself" in capsys.readouterr().out


def test_a_reference_held_in_a_closure_is_refused(capsys):
    def make():
        reference = ftlab.align.dpo.dpo_loss
        return lambda *args: reference(*args)[0]

    assert checks.check_dpo_loss(make()) is False
    assert "ftlab's own function" in capsys.readouterr().out


def test_hints_escalate_from_what_to_where_to_sketch(capsys):
    for _ in range(3):
        toy(lambda x: x)
    first, second, third = capsys.readouterr().out.split("[FAIL]")[1:]
    assert "fn(3) gave 3, expected 6" in first and "where to look" not in first
    assert "where to look: the definition of doubling" in second and "sketch" not in second
    assert "sketch: return ____ * x" in third


def test_a_success_resets_the_count(capsys):
    toy(lambda x: x)
    toy(lambda x: x)
    assert toy.exercise.attempts == 2
    toy(lambda x: 2 * x)
    assert toy.exercise.attempts == 0
