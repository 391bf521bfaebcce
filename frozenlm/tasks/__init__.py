"""Task glue (model + data + loss + metrics). Each module registers its task when imported;
the engine imports them lazily by name (``frozenlm.engine.task.BUILTIN_TASKS``)."""
