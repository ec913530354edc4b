"""BYOC network for the reference config trn_BYOC_Arch_loss.json, written the Clara 4.0 way (``dimensions``)."""

from collections.abc import Sequence

from monai.networks.nets import BasicUNet


class MyBasicUNet(BasicUNet):
    def __init__(
        self,
        dimensions: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=dimensions,
            in_channels=in_channels,
            out_channels=out_channels,
            features=features,
            norm=norm,
            dropout=dropout,
        )
