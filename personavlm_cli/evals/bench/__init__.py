"""`personavlm bench`: how fast the assistant is on this machine, against the product's bars.

Measured (each in its own temporary store or home; nothing touches the user's memories):

- start-up: wall time of ``personavlm --help`` and ``personavlm memory list`` in a child process
  (median of N), with a bare ``python -c pass`` as the interpreter's floor;
- recall latency (p50/p95, the query's embedding included) at 1k, 10k and 100k memories. The stores
  are built fast: records go straight into the record file and vectors straight into Chroma; the
  texts are varied, realistic chat lines, and the vectors are real MiniLM embeddings of a pool of
  such lines, reused with a little noise beyond the pool (embedding 100k texts would take minutes);
- memory work before the first token at 10k and 100k: storing and embedding the message, the
  recent context, recall, and prompt assembly, exactly as ``conversation.respond`` does them, without
  the model;
- generation speed through the chat path (``conversation.respond``'s stream) against raw
  llama-cpp-python on the same model, settings and prompt (decode tokens/s, and their ratio);
- CLIP time per image; replay throughput (turns stored per second, without the chat model); the
  update stage's time per turn and per session with the chat model, the wait it adds before the
  next prompt, and the delay it causes to an answer asked while it runs;
- time to the first token of every message of a scripted session with learning on, against raw
  llama-cpp-python cold on the same prompt (``session.py``; ``--remote``: ``session_remote.py``);
- peak memory (``resource.getrusage``).

One module per scenario: ``startup``, ``recall`` (recall and the work before the first token), ``forget``,
``generation``, ``clip``, ``replay``, ``update``, ``ttft``, ``session`` and ``session_remote``; what they
share is in ``common`` (the ``Host``, timing figures, realistic text, big stores).
``harness.run`` measures the chosen sections and judges the bars (``harness.BARS``); what only the composition
root may build (the user's environment, CLIP from the settings, the REPL's chat session) comes in a ``Host``.
``--quick`` is the CI-sized run (1k and 10k memories, fewer repeats); it stays within ten minutes on
two busy CPU cores.
"""
