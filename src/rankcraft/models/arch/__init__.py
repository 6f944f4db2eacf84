"""Architectures as data: the JSON format (:mod:`.format`), the network built from it (:mod:`.network`), its
analytic cost (:mod:`.cost`), zoo models written as architectures (:mod:`.zoo`) and the ``arch`` zoo model
(:mod:`.model`). The search package only *uses* these."""

from rankcraft.models.arch.model import ArchModel

__all__ = ["ArchModel"]
