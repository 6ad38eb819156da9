"""Core ComfyUI nodes used by the example workflows: inputs (in definition order), widgets and outputs.

Written from ComfyUI v0.3.6x (``nodes.py``, ``comfy_extras/nodes_upscale_model.py``,
``nodes_photomaker.py``, ``nodes_primitive.py``, ``nodes_preview_any.py``, ``comfy/samplers.py``).
An input is a widget when its type is INT, FLOAT, STRING, BOOLEAN or COMBO; ``files`` names the model
folder a COMBO lists (its values depend on the user's disk); ``control_after_generate`` and
``image_upload`` add one more value to ``widgets_values`` in the UI format.
"""

from __future__ import annotations

MAX_RESOLUTION = 16384

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CONTROL_AFTER_GENERATE = ["fixed", "increment", "decrement", "randomize"]
FILE_EXTENSIONS = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth", ".sft"),
    "upscale_models": (".safetensors", ".pth", ".pt", ".ckpt", ".bin"),
    "photomaker": (".safetensors", ".bin", ".pt", ".pth"),
    "input": (".png", ".jpg", ".jpeg", ".webp"),
    "input_video": (".mp4", ".webm", ".mov", ".mkv", ".gif"),
}


def _in(name: str, type_: str, **spec) -> dict:
    return {"name": name, "type": type_, "optional": False, **spec}


def _out(*types: str) -> list[dict]:
    return [{"name": t, "type": t} for t in types]


CORE_NODES: dict[str, dict] = {
    "CheckpointLoaderSimple": {
        "inputs": [_in("ckpt_name", "COMBO", files="checkpoints")],
        "outputs": _out("MODEL", "CLIP", "VAE"),
    },
    "CLIPTextEncode": {
        "inputs": [_in("text", "STRING", multiline=True), _in("clip", "CLIP")],
        "outputs": _out("CONDITIONING"),
    },
    "EmptyLatentImage": {
        "inputs": [_in("width", "INT", default=512, min=16, max=MAX_RESOLUTION),
                   _in("height", "INT", default=512, min=16, max=MAX_RESOLUTION),
                   _in("batch_size", "INT", default=1, min=1, max=4096)],
        "outputs": _out("LATENT"),
    },
    "KSampler": {
        "inputs": [_in("model", "MODEL"),
                   _in("seed", "INT", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                   _in("steps", "INT", default=20, min=1, max=10000),
                   _in("cfg", "FLOAT", default=8.0, min=0.0, max=100.0),
                   _in("sampler_name", "COMBO", options=SAMPLERS),
                   _in("scheduler", "COMBO", options=SCHEDULERS),
                   _in("positive", "CONDITIONING"), _in("negative", "CONDITIONING"),
                   _in("latent_image", "LATENT"),
                   _in("denoise", "FLOAT", default=1.0, min=0.0, max=1.0)],
        "outputs": _out("LATENT"),
    },
    "VAEDecode": {"inputs": [_in("samples", "LATENT"), _in("vae", "VAE")], "outputs": _out("IMAGE")},
    "LoadImage": {
        "inputs": [_in("image", "COMBO", files="input", image_upload=True)],
        "outputs": _out("IMAGE", "MASK"),
    },
    "PreviewImage": {"inputs": [_in("images", "IMAGE")], "outputs": []},
    "SaveImage": {
        "inputs": [_in("images", "IMAGE"), _in("filename_prefix", "STRING", default="ComfyUI")],
        "outputs": [],
    },
    "ImageScale": {
        "inputs": [_in("image", "IMAGE"), _in("upscale_method", "COMBO", options=UPSCALE_METHODS),
                   _in("width", "INT", default=512, min=0, max=MAX_RESOLUTION),
                   _in("height", "INT", default=512, min=0, max=MAX_RESOLUTION),
                   _in("crop", "COMBO", options=["disabled", "center"])],
        "outputs": _out("IMAGE"),
    },
    "ImageScaleBy": {
        "inputs": [_in("image", "IMAGE"), _in("upscale_method", "COMBO", options=UPSCALE_METHODS),
                   _in("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0)],
        "outputs": _out("IMAGE"),
    },
    "UpscaleModelLoader": {
        "inputs": [_in("model_name", "COMBO", files="upscale_models")],
        "outputs": _out("UPSCALE_MODEL"),
    },
    "ImageUpscaleWithModel": {
        "inputs": [_in("upscale_model", "UPSCALE_MODEL"), _in("image", "IMAGE")],
        "outputs": _out("IMAGE"),
    },
    "PhotoMakerLoader": {
        "inputs": [_in("photomaker_model_name", "COMBO", files="photomaker")],
        "outputs": _out("PHOTOMAKER"),
    },
    "PhotoMakerEncode": {
        "inputs": [_in("photomaker", "PHOTOMAKER"), _in("image", "IMAGE"), _in("clip", "CLIP"),
                   _in("text", "STRING", multiline=True, default="photograph of photomaker")],
        "outputs": _out("CONDITIONING"),
    },
    "PrimitiveStringMultiline": {
        "inputs": [_in("value", "STRING", multiline=True)],
        "outputs": _out("STRING"),
    },
    "PreviewAny": {"inputs": [_in("source", "*")], "outputs": []},
    # comfy_extras/nodes_video.py (V3): a video file from input/ as ComfyUI's VIDEO
    "LoadVideo": {"inputs": [_in("file", "COMBO", files="input_video", video_upload=True)], "outputs": _out("VIDEO")},
}

FRONTEND_ONLY: dict[str, dict] = {
    # Nodes that live only in the frontend (never sent to the server): a text box each.
    "Note": {"inputs": [_in("text", "STRING", multiline=True)], "outputs": []},
    "MarkdownNote": {"inputs": [_in("text", "STRING", multiline=True)], "outputs": []},
}
