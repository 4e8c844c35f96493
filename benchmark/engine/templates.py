"""Caption templates and evaluation prompts shared by all methods (protocol data, not code).

OBJECT_TEMPLATES: the official DVAR list (textual inversion's `imagenet_templates_small` with its
"illustration" / "depiction" variants), deduplicated in order: 57 templates.
TRAIN_EVAL_TEMPLATES: the 8 train prompts of the official runs (drawn once with numpy seed 59, the
same for every concept and method; reference/dvar_reference.md §4.1).
"""

OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
    "an illustration of a {}",
    "an illustration of a clean {}",
    "an illustration of a dirty {}",
    "an illustration of my {}",
    "an illustration of the cool {}",
    "an illustration of the {}",
    "an illustration of one {}",
    "an illustration of the clean {}",
    "an illustration of a nice {}",
    "an illustration of the nice {}",
    "an illustration of the small {}",
    "an illustration of the weird {}",
    "an illustration of the large {}",
    "an illustration of a cool {}",
    "an illustration of a small {}",
    "a depiction of a {}",
    "a depiction of a clean {}",
    "a depiction of a dirty {}",
    "a depiction of my {}",
    "a depiction of the cool {}",
    "a depiction of the {}",
    "a depiction of one {}",
    "a depiction of the clean {}",
    "a depiction of a nice {}",
    "a depiction of the nice {}",
    "a depiction of the small {}",
    "a depiction of the weird {}",
    "a depiction of the large {}",
    "a depiction of a cool {}",
    "a depiction of a small {}",
]

TRAIN_EVAL_TEMPLATES = [
    "a depiction of the clean {}",
    "a depiction of a dirty {}",
    "a good photo of the {}",
    "a photo of the weird {}",
    "a depiction of a clean {}",
    "a close-up photo of the {}",
    "a depiction of the weird {}",
    "a photo of a {}",
]

# Prefixes of the Custom Diffusion random-rescale augmentation (small object / zoomed in).
FAR_PREFIXES = ["a far away ", "very small "]
CLOSE_PREFIXES = ["zoomed in ", "close up "]
