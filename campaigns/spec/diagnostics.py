"""The ``diagnostics`` section: how failure regions are found and tested, and which biased
splits (:class:`SplitName`) are reported.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from .base import ELEMENTS, Section, short

__all__ = ["DiagnosticsConfig", "SplitName"]


class SplitName(StrEnum):
    """Biased train/test splits that expose out-of-distribution failure."""

    RANDOM = "random"
    CLUSTER = "cluster"
    MAXSEP = "maxsep"
    SIZE = "size"
    ELEMENT = "element"
    GROUP = "group"
    TEMPERATURE = "temperature"


class DiagnosticsConfig(Section):
    """How failure regions are found and tested, and which biased splits are reported."""

    splits: list[SplitName] = Field(
        [SplitName.RANDOM, SplitName.CLUSTER, SplitName.MAXSEP, SplitName.SIZE]
    )
    n_clusters: int = Field(20, ge=2, description="KMeans clusters for the cluster split")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for CIs")
    alpha: float = Field(0.05, gt=0, lt=1, description="false-discovery rate (Benjamini-Hochberg)")
    min_region_atoms: int = Field(10, ge=1, description="smallest region reported")
    tree_depth: int = Field(3, ge=1, le=6, description="depth of the rule-finding tree")
    min_ratio: float = Field(
        1.2, ge=1, description="smallest error ratio to the baseline a region must show"
    )
    silent_factor: float = Field(
        2.0,
        gt=1,
        description="a region is silent when its error/uncertainty ratio is this x the overall one",
    )
    environment_classes: int = Field(
        8, ge=1, description="KMeans classes of local environments (per-atom SOAP)"
    )
    exemplars: int = Field(3, ge=0, description="exemplar structures saved per region")
    max_regions: int = Field(20, ge=1, description="most regions reported")
    id_force_target: float = Field(
        0.15,
        gt=0,
        le=1,
        description="regions are findings once the in-distribution force MAE is at most this "
        "fraction of the in-distribution test forces' RMS (above it they are tentative)",
    )
    id_fraction: float = Field(
        0.2, gt=0, lt=1, description="split study: train side held out as in-distribution test"
    )
    holdout_element: str | None = Field(None, description="element split: element held out")
    holdout_group: str | None = Field(
        None, description="group split: functional group held out (e.g. nitrile)"
    )

    @field_validator("holdout_element")
    @classmethod
    def _known_holdout_element(cls, value: str | None) -> str | None:
        if value is not None and value not in ELEMENTS:
            raise ValueError(f"unknown element {short(value)}")
        return value
