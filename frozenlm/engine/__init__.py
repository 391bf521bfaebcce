"""One task-agnostic training/evaluation engine: tasks plug in model, data, loss and metrics."""
from frozenlm.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from frozenlm.engine.evaluation import evaluate
from frozenlm.engine.task import Task, get_task, register_task, registered_tasks
from frozenlm.engine.train import train
from frozenlm.engine.trained import load_trained, save_trained

__all__ = ["Task", "register_task", "get_task", "registered_tasks", "train", "evaluate",
           "load_checkpoint", "save_checkpoint", "latest_checkpoint", "CheckpointError", "load_trained",
           "save_trained"]
