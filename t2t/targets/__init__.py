"""Target token distributions, as pure maths (no Ray, no model loading of their own):

- `kinds`: the registry of target kinds a stage's `targets:` names (torch-free; the recipe loader reads it);
- `data_driven`: the `data-driven` kind (Text2Token stage 1); `model_derived`: the `model-derived` kind (stage 2);
- `sparse`: the sparse (ids, weights) form they are written in.
"""
