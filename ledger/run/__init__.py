"""Running a runbook: the template state of a run (context), and the engine around it."""
