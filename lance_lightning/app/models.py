"""A small MLP classifier: the default model of the Hydra job and of the examples.

It reads one feature column and one label column from the batch dicts that
:class:`~lance_lightning.LanceDataModule` yields, so the same class trains on the 8x8 digits
demo (``input_key="image"``, 64 features) and on an embeddings table (``input_key="emb"``).
Loss and accuracy are logged as ``{train,val,test}/{loss,acc}``; accuracy is a torchmetrics
object, so it is reduced across DDP ranks exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class MLPClassifier(pl.LightningModule):
    """``features -> [Linear, ReLU, Dropout] * len(hidden_dims) -> Linear -> logits``.

    Args:
        in_features: the feature count of one row (64 for 8x8 images: the column is flattened).
        num_classes: the label values are ``0 .. num_classes - 1``.
        hidden_dims: widths of the hidden layers.
        dropout: dropout after each hidden layer.
        lr, weight_decay: AdamW's settings.
        input_key, label_key: the batch keys (column names) of features and labels.
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden_dims: Sequence[int] = (128,),
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        input_key: str = "image",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]  # a plain list in the logged hparams
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.loss = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.flatten(1).float())

    def _unpack(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """(inputs, labels): from a dict by ``input_key``/``label_key``, or a tuple ``(x, y)``
        (``data.batch_keys=[image, label]``)."""
        if isinstance(batch, (tuple, list)):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch[self.hparams.input_key], batch.get(self.hparams.label_key)

    def _step(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        features, labels = self._unpack(batch)
        labels = labels.long()
        logits = self(features)
        loss = self.loss(logits, labels)
        accuracy(logits, labels)
        on_step = stage == "train"
        size = len(labels)
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(self._unpack(batch)[0]).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
