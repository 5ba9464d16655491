"""Learning: what the assistant learns about its user, taken from the user's own words and checked against them.

A small local model cannot be trusted to say what is true about the user: asked to extract facts it
invents them, and it happily builds them from its own answers. So learning does not depend on the
model's judgement:

- **Statements** are the user's own sentences that say something about them: a first-person
  sentence ("I", "my", "we", "our", ...) that is not a question, a greeting or a request to the
  assistant, with at least two content words. Each is kept in the user's words, as a semantic
  memory, or a procedural one when it states a habit ("every Saturday", "usually") or a plan
  ("I am planning", "next month", "in August I am going").
- **The core profile** has a schema (``FIELDS``): each field's value is cut out of one of the user's
  sentences by a pattern ("my name is X", "I work as X", "my parrot is called X"), and carries the
  id of the turn it came from. There are no free-form keys.
- **Grounding**: every learnt text must be supported by the user's own turns it cites: all its
  content words occur in them (``supported``). The assistant's turns are never evidence. A model,
  where it is used to rephrase, passes the same check, and what fails is dropped and counted.
- **Supersession**: a statement that announces a change ("I switched from Sprite to Coke", "I no
  longer ...", "... instead") closes the current statements that name what changed.

The package, by job: ``patterns`` (what a statement, a habit, a profile value or a change looks like),
``grounding`` (``supported``, ``stated``), ``profile`` (the core profile's schema), ``changes`` (the
newest statement wins: what a later statement makes past), ``corrections`` (``memory edit``: the user's
text becomes the current version), ``learner`` (the rules ``Learner`` that writes it all to the store).
"""
