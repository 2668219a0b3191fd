"""pyreft adapter folders and their interventions, read as one low-rank form per donor layer."""
