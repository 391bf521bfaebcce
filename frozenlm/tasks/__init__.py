"""Task glue (model + data + loss + metrics); the protocol is ``base.Task``. The engine finds the built-in
tasks by name (``frozenlm.engine.task.BUILTIN_TASKS``, imported lazily) and builds one object per run."""
