"""The benchmark command (ftlab/bench.py) runs end to end and reports ratios of what it measured."""
import pytest
import torch

from ftlab import bench
from ftlab.__main__ import main


def test_interleaved_alternates_the_order_between_repeats():
    calls = []
    results = bench.interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert results == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_bench_lora_command_prints_both_ratios_and_restores_threads(capsys):
    threads = torch.get_num_threads()
    assert main(["bench", "lora", "--repeats", "2", "--batch-size", "2", "--seq-len", "8", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "ftlab LoRA" in printed and "peft LoRA" in printed and "ftlab merged" in printed
    assert printed.count("ratio") == 2 and "1 threads" in printed
    assert torch.get_num_threads() == threads


def test_bench_lora_ratios_are_the_median_of_per_repeat_ratios(monkeypatch):
    seconds = iter([1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0])  # ftlab, peft | peft, ftlab | merged, base | base, merged
    monkeypatch.setattr(bench, "time_step", lambda *args, **kwargs: next(seconds))
    monkeypatch.setattr(bench, "time_forward", lambda *args, **kwargs: next(seconds))
    report = bench.bench_lora(batch_size=2, seq_len=8, repeats=2, num_steps=1, verbose=False)
    assert report["train"]["ratio"] == pytest.approx((0.5 + 1.0) / 2)
    assert (report["train"]["ratio_min"], report["train"]["ratio_max"]) == (0.5, 1.0)
    assert report["train"]["ftlab"] == 1.5 and report["train"]["reference"] == 2.0
    assert report["inference"]["ratio"] == 1.0
