"""The LLM cancel benchmark's own arithmetic, with a scripted model."""

from __future__ import annotations

from bargein.bench.llm_cancel import format_cancel_report, run_cancel_bench
from bargein.providers.scripted import ScriptedLLM


async def test_the_report_counts_and_formats_each_cancel() -> None:
    llm = ScriptedLLM([" ".join(["word"] * 50)], first_token_s=0.001, tokens_per_s=500)
    summary = await run_cancel_bench(llm, repeats=4, after_tokens=5)
    assert summary["repeats"] == 4 and len(summary["measurements"]) == 4
    assert all(m.tokens_before_cancel == 5 for m in summary["measurements"])
    assert summary["tokens_after_cancel_p95"] == 0
    assert all(stream.closed for stream in llm.streams)
    # Scripted tokens come every 2 ms: the median step is measured, not assumed.
    assert 1.5 <= summary["decode_step_ms_p50"] <= 20
    table = format_cancel_report({"scripted": summary}).splitlines()
    assert table[0].split()[:3] == ["model", "aclose", "p50"]
    assert table[2].startswith("scripted") and table[2].split()[-1] == "0"
