"""The offline synthetic remote-sensing world (see docs/SYNTHETIC_WORLD.md)."""

from fedvlm.data.synthetic.dataset import generate_dataset
from fedvlm.data.synthetic.generate import generate, generate_arrays, generate_region_arrays
from fedvlm.data.synthetic.layout import Scene, sample_scene
from fedvlm.data.synthetic.render import ObjectInstance, RenderedScene, render
from fedvlm.data.synthetic.styles import ClientStyle, sample_styles
from fedvlm.data.synthetic.world import WORLD, World

__all__ = ["WORLD", "World", "Scene", "sample_scene", "render", "RenderedScene", "ObjectInstance", "ClientStyle",
           "sample_styles", "generate", "generate_arrays", "generate_region_arrays", "generate_dataset"]
