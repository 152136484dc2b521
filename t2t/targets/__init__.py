"""Target token distributions, as pure maths (no Ray, no model loading of their own):

- `kinds`: the registry of target kinds a stage's `targets:` names (torch-free; the recipe loader reads it);
- `stage1`: data-driven targets (Text2Token stage 1); `stage2`: model-derived targets (stage 2);
- `sparse`: the sparse (ids, weights) form they are written in.
"""
