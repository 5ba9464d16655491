"""Recall (``core/recall.py``) on a real store: the signals beyond dense and lexical matching, and the
dates a question names. The conversation is LoCoMo's synthetic one from test_locomo.py, replayed into
a temporary store with the real MiniLM encoder and Chroma index."""

from __future__ import annotations

import pytest

from personavlm_cli.evals import locomo as lc
from personavlm_cli.evals.workspace import temporary_store
from tests.test_locomo import synthetic, write


@pytest.mark.fast
def test_context_and_speaker_signals(tmp_path):
    """An answer that shares no word with the question is found through the turn before it; the
    context signal never marks it as a lexical match (forget --query relies on that)."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.dates import query_dates
    from personavlm_cli.core.recall import Query, recall

    store = temporary_store(tmp_path / "u", TextEncoder())
    (conv,) = lc.load(write(tmp_path, synthetic()))
    dia_of = lc.replay(conv, store)
    by_dia = {v: k for k, v in dia_of.items()}
    hits = recall(store, Query(text="What is Bastian cooking tonight?"), k=5)
    signals = {dia_of[h.memory.id]: h.signals for h in hits}
    assert "lexical" in signals["D1:4"]
    # Bastian's question about cooking carries over to the turns around it, without matching them.
    assert "context" in signals.get("D1:3", {}) and "lexical" not in signals["D1:3"]
    named = [dia_of[h.memory.id] for h in hits if "speaker" in h.signals]
    assert named and all(store.records.get(by_dia[d]).meta["speaker"] == "Bastian" for d in named)
    assert query_dates("What did she paint on October 13, 2023?") == [(2023, 10, 13)]
    assert query_dates("When did Melanie go camping in June?") == [(None, 6, None)]
    assert query_dates("May I ask you something?") == []
    store.close()
