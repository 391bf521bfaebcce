"""Motion forecasting: VectorNet / mmTransformer-style predictors (+LMLayer) on Argoverse or generated scenes."""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn

from ..config import section
from ..data.motion import MotionDataset, build_motion_dataset, collate_motion
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs
from .motion_metrics import forecast_finalize, forecast_sums, wta_loss


def _future(cfg: Any) -> Any:
    """Forecast length: model.future, or data.future (30) when it is null."""
    return int(cfg.data.get("future", 30)) if cfg.model.get("future") is None else cfg.model.future


def _loss_args(cfg: Any) -> tuple[float, float]:
    loss = cfg.get("loss") or {}
    return float(loss.get("cls_weight", 1.0)), float(loss.get("relax", 0.0))


class MotionForecasting(Task):
    """Predict the focal agent's future (K modes + scores); metrics minADE/minFDE/MR at K=1 and 6."""

    primary_metric, primary_mode = "minFDE_6", "min"
    config_keys = (
        *section("model", "name", "hidden", "subgraph_depth", "future", "modes", "position", "enc_layers",
                 "dec_layers", "heads"),
        *lm_config_keys("model.lm"),
        *section("data", "name", "history", "future", "radius", "max_agents", "max_lanes", "skip_invalid",
                 "num_train", "num_val", "root", "synth_seed", "cache_dir", "lanes_file", "observed", "on_error"),
        *section("loss", "cls_weight", "relax"),
    )

    def build_model(self, cfg: Any) -> nn.Module:
        return create_model(cfg.model.name, **model_kwargs(cfg, future=_future(cfg)))

    def build_dataset(self, cfg: Any, split: str) -> Optional[MotionDataset]:
        ds = build_motion_dataset(cfg.data, split)
        if ds is not None:
            t = ds[0]["target"].shape[0]
            want = _future(cfg)
            if t != want:
                raise ValueError(f"data ({split}) has {t}-step futures but model.future is {want}; "
                                 "set model.future to data.future (or leave it null)")
        return ds

    def collate_fn(self, cfg: Any, split: str) -> Callable:
        return collate_motion

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        out = model(batch)
        return wta_loss(out["traj"].float(), out["logits"].float(), batch["target"], *_loss_args(cfg))

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        out = model(batch)
        traj, logits = out["traj"].float(), out["logits"].float()
        sums = forecast_sums(traj, logits, batch["target"])
        per = wta_loss(traj, logits, batch["target"], *_loss_args(cfg))
        sums["loss_sum"] = per.detach().double() * len(traj)
        return sums

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        return forecast_finalize(sums)
