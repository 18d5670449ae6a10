"""Small hand-made concept records shared by the demo's tests."""

from __future__ import annotations

from clearglass.magic.schema import ConceptRecord, ImageRecord


def make_concepts(groups: int = 3, per_group: int = 3, images: int = 5) -> list[ConceptRecord]:
    out = []
    for g in range(groups):
        for c in range(per_group):
            name = f"concept{g}{c}"
            ims = [ImageRecord(f"{name}/{i}.png", [f"thing {i}"], [f"thing {i}"], name, f"group{g}")
                   for i in range(images)]
            out.append(ConceptRecord(name, [], ims[:-1], ims[-1:]))
    return out
