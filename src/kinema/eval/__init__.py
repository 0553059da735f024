"""Evaluation: metrics, and probes that check generated clips against their prompts.

`kinema.eval.shapes_probe` measures colour, shape, size and motion in a clip of
the `shapes` dataset (SHAPES.md, "The probe"). Import submodules directly.
"""
