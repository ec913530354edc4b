"""The built-in catalog: the classes real Clara configs use, each with what its arguments are.

Collected from the shipped MMARs, NVIDIA's clara-train-examples, the Clara 4.0 test MMAR and the Clara 4.0
names :mod:`clara_fl.config.compat` maps, and checked against the MONAI 1.6 / PyTorch 2.13 / Ignite 0.5 code
of each class: a parameter not listed under a class is plain data there (numbers, option words, keys,
components, config code). Families admit the long tail of classes whose constructors only store values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from clara_fl.config.policy.kinds import ArgRule, ClassRule, Family, Kind

__all__ = ["CLASSES", "FAMILIES", "GLOBAL_ARGS", "PATH_LIKE", "WORD_ARGS", "is_word_argument"]

DATA = ArgRule(Kind.DATA)
WORD = ArgRule(Kind.WORD)
READ = ArgRule(Kind.PATH_READ)
WRITE = ArgRule(Kind.PATH_WRITE)
FILE = ArgRule(Kind.FILE_NAME)
FILE_KEYS = ArgRule(Kind.FILE_NAME_KEYS)


def _refused(why: str) -> ArgRule:
    return ArgRule(Kind.REFUSED, what=why)


def _names(what: str, *allowed: str) -> ArgRule:
    return ArgRule(Kind.NAME, allowed, what)


PASSED_THROUGH = "options passed through to another library"

# Wherever a class has one of these arguments (a catalogued entry may override), it is judged so.
GLOBAL_ARGS: Mapping[str, ArgRule] = {
    "allow_pickle": ArgRule(Kind.FLAG_FALSE, what="numpy unpickles object arrays when it is true"),
    "weights_only": ArgRule(Kind.FLAG_TRUE, what="torch.load unpickles any object unless it is true"),
    "pretrained": ArgRule(Kind.FLAG_FALSE, what="true downloads weights, a path loads a file"),
    "download": ArgRule(Kind.FLAG_FALSE, what="true fetches files from the network"),
    "trust_remote_code": ArgRule(Kind.FLAG_FALSE, what="true runs code fetched from the network"),
    "compile": ArgRule(Kind.FLAG_FALSE, what="true hands the network to torch.compile, which generates code"),
    "compile_kwargs": _refused("options passed through to torch.compile"),
    "pickle_module": _refused("a module that pickles and unpickles"),
    "hash_func": _refused("its result names the cache files"),
    "hash_transform": _refused("its result names the cache files"),
}

# Option words and keys the generic rules take as words (MONAI looks them up in fixed tables or uses them
# as dictionary keys; none of these is ever imported).
WORD_ARGS = frozenset(
    {
        "mode",
        "padding_mode",
        "method",
        "reduction",
        "dtype",
        "output_dtype",
        "data_type",
        "device",
        "sw_device",
        "norm",
        "act",
        "norm_name",
        "act_name",
        "norm_type",
        "acti_type",
        "upsample",
        "upsample_mode",
        "interp_mode",
        "average",
        "metric_name",
        "tag_name",
        "event",
        "trigger_event",
        "map_location",
        "distance_metric",
        "rounding",
        "w_type",
        "proj_type",
        "pos_embed",
        "pos_embed_type",
        "block",
        "multiprocessing_context",
        "pin_memory_device",
        "prune_meta_pattern",
        "prune_meta_sep",
        "runtime_cache",
    }
)
_KEY_LIKE = re.compile(r"^(keys?|names|.*_keys?|.*_key_postfix|post_fix)$")
#: Arguments whose name says they are a path, a file or a URL: refused in family classes.
PATH_LIKE = re.compile(r"(^|_)(path|paths|dir|dirs|directory|file|files|filename|filenames|url|urls|uri)($|_)")


def is_word_argument(name: str) -> bool:
    """Whether the generic rules take the argument ``name`` as an option word or a key."""
    return name in WORD_ARGS or bool(_KEY_LIKE.match(name))


# -- data: reading and writing images -------------------------------------------------------------------

IMAGE_READERS = _names(
    "MONAI's image readers",
    *(
        f"monai.data.{reader}"
        for reader in ("ITKReader", "NibabelReader", "NumpyReader", "PILReader", "PydicomReader", "NrrdReader")
    ),
)
IMAGE_WRITERS = _names(
    "MONAI's image writers", *(f"monai.data.{writer}" for writer in ("ITKWriter", "NibabelWriter", "PILWriter"))
)
# The options LoadImage and ImageDataset hand to every reader they register (the readers' own parameters).
READER_OPTIONS: Mapping[str, ArgRule] = {
    "channel_dim": DATA,
    "as_closest_canonical": DATA,
    "squeeze_non_spatial_dims": DATA,
    "reverse_indexing": DATA,
    "affine_lps_to_ras": DATA,
    "series_name": WORD,
    "series_meta": DATA,
    "npz_keys": WORD,
    "swap_ij": DATA,
    "prune_metadata": DATA,
    "label_dict": DATA,
    "to_gpu": DATA,
    "mmap": DATA,
    "mmap_mode": WORD,
    "allow_pickle": GLOBAL_ARGS["allow_pickle"],
}
_LOAD_IMAGE = ClassRule(
    args={
        "reader": IMAGE_READERS,
        "dtype": WORD,
        "meta_keys": WORD,
        "meta_key_postfix": WORD,
        "prune_meta_pattern": WORD,
        "prune_meta_sep": WORD,
        **READER_OPTIONS,
    },
    passthrough="MONAI's image readers",
    why="reads the files of the site's datalist with MONAI's readers; the reader is one of them by name",
)
_SAVE_IMAGE = ClassRule(
    args={
        "output_dir": WRITE,
        "output_postfix": FILE,
        "output_ext": FILE,
        "output_format": FILE,
        "data_root_dir": _refused(
            "SaveImage rebuilds each output path from the input's folder relative to it, which can point "
            "anywhere (at the input itself)"
        ),
        "writer": IMAGE_WRITERS,
        "output_name_formatter": _refused("it returns the output file name"),
        "folder_layout": _refused("it computes the output path"),
        "meta_keys": WORD,
        "meta_key_postfix": WORD,
        "dtype": WORD,
        "output_dtype": WORD,
    },
    why="writes output_dir/<input file name>/<input file name>_<postfix><ext>, with every part checked",
)
_TORCHVISION = ClassRule(
    args={
        "name": _names(
            "torchvision's image transforms",
            *(
                f"torchvision.transforms.{name}"
                for name in (
                    "ColorJitter",
                    "RandomHorizontalFlip",
                    "RandomVerticalFlip",
                    "RandomRotation",
                    "RandomAffine",
                    "RandomResizedCrop",
                    "RandomCrop",
                    "CenterCrop",
                    "Resize",
                    "Pad",
                    "Normalize",
                    "GaussianBlur",
                    "Grayscale",
                    "RandomGrayscale",
                    "RandomErasing",
                    "RandomAdjustSharpness",
                    "RandomAutocontrast",
                    "RandomEqualize",
                    "RandomInvert",
                    "RandomPosterize",
                    "RandomSolarize",
                    "RandomPerspective",
                )
            ),
        )
    },
    extra=DATA,
    passthrough="the torchvision transform",
    why="builds one of torchvision's in-memory image transforms by name, with numeric options",
)

# -- data: datasets and loaders ----------------------------------------------------------------------------

_PERSISTENT = ClassRule(
    args={"cache_dir": WRITE},
    why="caches transformed items in cache_dir (in the job's folder) and reads them back with weights_only",
)
_TORCH_LOADER = "torch.utils.data.DataLoader"
_DATA: dict[str, ClassRule] = {
    "monai.data.Dataset": ClassRule(why="applies transforms to in-memory items"),
    "monai.data.CacheDataset": ClassRule(why="caches transformed items in memory"),
    "monai.data.SmartCacheDataset": ClassRule(why="caches transformed items in memory"),
    "monai.data.PersistentDataset": _PERSISTENT,
    "monai.data.CacheNTransDataset": _PERSISTENT,
    "monai.data.ArrayDataset": ClassRule(why="applies transforms to in-memory items"),
    "monai.data.ZipDataset": ClassRule(why="combines other datasets"),
    "monai.data.CSVDataset": ClassRule(
        args={"src": READ, "kwargs_read_csv": _refused("options passed through to pandas.read_csv")},
        why="reads the CSV files named by src",
    ),
    "monai.data.ImageDataset": ClassRule(
        args={"image_files": READ, "seg_files": READ, "reader": IMAGE_READERS, "dtype": WORD, **READER_OPTIONS},
        passthrough="MONAI's image readers",
        why="reads the image files named by image_files and seg_files with MONAI's readers",
    ),
    "monai.data.NPZDictItemDataset": ClassRule(
        args={"npzfile": READ, "keys": WORD, "other_keys": WORD}, why="reads one .npz file without pickles"
    ),
    "monai.data.PatchWSIDataset": ClassRule(
        args={"reader": _names("MONAI's whole-slide backends", "cuCIM", "cucim", "OpenSlide", "openslide", "tifffile")},
        passthrough="the whole-slide reader",
        why="reads whole-slide images of the datalist with a MONAI backend chosen by name",
    ),
    "monai.data.DataLoader": ClassRule(forwards_to=_TORCH_LOADER, why="loads batches from a dataset"),
    "monai.data.ThreadDataLoader": ClassRule(forwards_to=_TORCH_LOADER, why="loads batches from a dataset"),
    "monai.data.DistributedSampler": ClassRule(why="splits indices between processes"),
    "monai.data.CSVSaver": ClassRule(
        args={"output_dir": WRITE, "filename": FILE, "delimiter": WORD}, why="writes output_dir/filename"
    ),
}
for _reader in IMAGE_READERS.allowed:
    _DATA[_reader] = ClassRule(args={"series_name": WORD, "npz_keys": WORD}, why="reads image files it is given")

# -- handlers, engines, inferers ---------------------------------------------------------------------------

_CHECKPOINT_SAVER = {
    "save_dir": WRITE,
    "save_dict": FILE_KEYS,
    "file_prefix": FILE,
    "final_filename": FILE,
    "key_metric_filename": FILE,
    "key_metric_name": WORD,
    "name": WORD,
}
_METRICS_SAVER = {
    "save_dir": WRITE,
    "metrics": WORD,
    "metric_details": WORD,
    "summary_ops": WORD,
    "delimiter": WORD,
    "output_type": WORD,
}
_TENSORBOARD = {
    "log_dir": WRITE,
    "summary_writer": _refused("a writer of its own chooses where it writes"),
    "tag_name": WORD,
    "state_attributes": WORD,
}
_IN_MEMORY_HANDLER = "attaches to an engine and computes or logs in memory"
_HANDLERS: dict[str, ClassRule] = {
    "monai.handlers.CheckpointLoader": ClassRule(
        args={"load_path": READ, "map_location": WORD, "name": WORD},
        why="loads load_path with torch.load(weights_only=True)",
    ),
    "monai.handlers.CheckpointSaver": ClassRule(args=_CHECKPOINT_SAVER, why="writes checkpoints into save_dir"),
    "clara_fl.components.CheckpointSaver": ClassRule(
        args=_CHECKPOINT_SAVER, why="writes model.pt and final_model.pt into save_dir"
    ),
    "monai.handlers.MetricsSaver": ClassRule(args=_METRICS_SAVER, why="writes CSV files into save_dir"),
    "clara_fl.components.MetricsSaver": ClassRule(
        args=_METRICS_SAVER,
        forwards_to="monai.handlers.MetricsSaver",
        passthrough="MONAI's MetricsSaver",
        why="writes CSV files into save_dir",
    ),
    "monai.handlers.ClassificationSaver": ClassRule(
        args={
            "output_dir": WRITE,
            "filename": FILE,
            "delimiter": WORD,
            "name": WORD,
            "saver": _refused("a saver of its own chooses where it writes"),
        },
        why="writes output_dir/filename",
    ),
    "monai.handlers.TensorBoardStatsHandler": ClassRule(args=_TENSORBOARD, why="writes event files into log_dir"),
    "monai.handlers.TensorBoardImageHandler": ClassRule(args=_TENSORBOARD, why="writes event files into log_dir"),
    "clara_fl.components.TensorBoardStatsHandler": ClassRule(args=_TENSORBOARD, why="writes event files into log_dir"),
    "clara_fl.components.TensorBoardImageHandler": ClassRule(args=_TENSORBOARD, why="writes event files into log_dir"),
    "monai.handlers.StatsHandler": ClassRule(
        args={"name": WORD, "tag_name": WORD, "key_var_format": WORD, "state_attributes": WORD},
        why="logs to Python logging",
    ),
    "monai.handlers.LrScheduleHandler": ClassRule(args={"name": WORD}, why=_IN_MEMORY_HANDLER),
    "monai.handlers.ValidationHandler": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.EarlyStopHandler": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.SmartCacheHandler": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.GarbageCollector": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.DecollateBatch": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.PostProcessing": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.ParamSchedulerHandler": ClassRule(
        args={"value_calculator": WORD, "name": WORD}, why=_IN_MEMORY_HANDLER
    ),
    "monai.handlers.MetricLogger": ClassRule(why=_IN_MEMORY_HANDLER),
    "monai.handlers.IgniteMetricHandler": ClassRule(why=_IN_MEMORY_HANDLER),
}
for _metric in (
    "MeanDice",
    "ROCAUC",
    "ConfusionMatrix",
    "HausdorffDistance",
    "SurfaceDistance",
    "MeanIoUHandler",
    "AveragePrecision",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "RootMeanSquaredError",
    "PeakSignalToNoiseRatio",
    "PanopticQuality",
):
    _HANDLERS[f"monai.handlers.{_metric}"] = ClassRule(why=_IN_MEMORY_HANDLER)

_ENGINE = ClassRule(
    args={
        "amp_kwargs": _refused("options passed through to torch.autocast"),
        "to_kwargs": _refused("options passed through to Tensor.to"),
        "pred_keys": WORD,
        "event_names": WORD,
    },
    why="runs the network over the loader's batches in memory",
)
_INFERER = ClassRule(why="runs the network over an input in memory")
_ENGINES: dict[str, ClassRule] = {
    "monai.engines.SupervisedTrainer": _ENGINE,
    "monai.engines.SupervisedEvaluator": _ENGINE,
    "monai.engines.EnsembleEvaluator": _ENGINE,
    "monai.inferers.SimpleInferer": _INFERER,
    "monai.inferers.SlidingWindowInferer": _INFERER,
    "monai.inferers.SlidingWindowInfererAdapt": _INFERER,
    "monai.inferers.SliceInferer": _INFERER,
}

# -- networks -----------------------------------------------------------------------------------------------

_NETWORK = "allocates layers; layer names go through MONAI's fixed layer factories"
_NETWORKS: dict[str, ClassRule] = {
    f"monai.networks.nets.{net}": ClassRule(why=_NETWORK)
    for net in (
        "UNet",
        "BasicUNet",
        "BasicUNetPlusPlus",
        "DynUNet",
        "SegResNet",
        "SegResNetVAE",
        "SegResNetDS",
        "UNETR",
        "SwinUNETR",
        "AttentionUnet",
        "VNet",
        "HighResNet",
        "DenseNet",
        "AHNet",
        "Classifier",
        "Regressor",
        "Discriminator",
        "Generator",
        "AutoEncoder",
        "VarAutoEncoder",
        "ResNet",
        "ViT",
        "ViTAutoEnc",
        "LocalNet",
        "GlobalNet",
        "RegUNet",
        "EfficientNetBN",
    )
}
# The backbone is looked up in MONAI's registry of encoder classes (a dict).
_NETWORKS["monai.networks.nets.FlexibleUNet"] = ClassRule(args={"backbone": WORD}, why=_NETWORK)
for _densenet in ("DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264"):
    _NETWORKS[f"monai.networks.nets.{_densenet}"] = ClassRule(
        forwards_to="monai.networks.nets.DenseNet", passthrough="DenseNet", why=_NETWORK
    )
for _senet in ("SEResNet50", "SEResNet101", "SEResNet152", "SEResNext50", "SEResNext101", "SENet154"):
    _NETWORKS[f"monai.networks.nets.{_senet}"] = ClassRule(
        forwards_to="monai.networks.nets.SENet", passthrough="SENet", why=_NETWORK
    )
_NETWORKS["monai.networks.nets.TorchVisionFCModel"] = ClassRule(
    args={
        "model_name": _names(
            "torchvision's classification networks",
            *(
                f"torchvision.models.{name}"
                for name in (
                    "resnet18",
                    "resnet34",
                    "resnet50",
                    "resnet101",
                    "resnet152",
                    "resnext50_32x4d",
                    "resnext101_32x8d",
                    "wide_resnet50_2",
                    "densenet121",
                    "densenet161",
                    "densenet169",
                    "densenet201",
                    "inception_v3",
                    "mobilenet_v2",
                    "efficientnet_b0",
                    "vgg16",
                )
            ),
        ),
        "weights": _refused("weights are downloaded or loaded by torchvision"),
        "fc_name": WORD,
        "node_name": WORD,
    },
    passthrough="the torchvision network",
    why="builds one of torchvision's networks by name, without downloaded weights",
)

# -- clara-fl's own -----------------------------------------------------------------------------------------

_CLARA_FL: dict[str, ClassRule] = {
    "clara_fl.components.legacy_transform.LegacyTransform": ClassRule(
        why="runs a custom transform (BYOC) on items as MONAI 0.5 made them"
    ),
    "clara_fl.components.legacy_handler.LegacyHandler": ClassRule(
        why="attaches a custom handler (BYOC) so that it sees batched engine output"
    ),
}

CLASSES: Mapping[str, ClassRule] = {
    "monai.transforms.LoadImage": _LOAD_IMAGE,
    "monai.transforms.LoadImaged": _LOAD_IMAGE,
    "monai.transforms.SaveImage": _SAVE_IMAGE,
    "monai.transforms.SaveImaged": _SAVE_IMAGE,
    "monai.transforms.TorchVision": _TORCHVISION,
    "monai.transforms.TorchVisiond": _TORCHVISION,
    **_DATA,
    **_HANDLERS,
    **_ENGINES,
    **_NETWORKS,
    **_CLARA_FL,
}

_IN_MEMORY = "its constructors store numbers, option words, keys and callables; the classes compute in memory"
FAMILIES: tuple[Family, ...] = (
    Family(
        "monai.transforms",
        "MONAI transforms compute on arrays in memory; " + _IN_MEMORY,
        excluded_modules=("monai.transforms.io", "monai.transforms.utils_create_transform_ims"),
        # Name a class of another library, which is built with the remaining keywords.
        excluded_classes=frozenset({"TorchVision", "RandTorchVision", "TorchIO", "RandTorchIO", "CuCIM", "RandCuCIM"}),
    ),
    Family("monai.apps.deepgrow.transforms", "Deepgrow transforms compute on arrays in memory"),
    Family("monai.apps.deepgrow.interaction", "Deepgrow's click simulation runs transforms in memory"),
    Family("monai.apps.deepedit.transforms", "DeepEdit transforms compute on arrays in memory"),
    Family("monai.apps.deepedit.interaction", "DeepEdit's click simulation runs transforms in memory"),
    Family("monai.apps.pathology.transforms", "pathology transforms compute on arrays in memory"),
    Family("monai.losses", "MONAI losses compute on tensors", excluded_modules=("monai.losses.perceptual",)),
    Family("monai.optimizers", "MONAI optimizers update tensors", excluded_modules=("monai.optimizers.lr_finder",)),
    Family("torch.nn", "PyTorch modules allocate tensors; " + _IN_MEMORY),
    Family("torch.optim", "PyTorch optimizers and schedulers update tensors in memory"),
    Family(
        "torch.utils.data",
        "PyTorch datasets, samplers and loaders work on in-memory items",
        excluded_modules=("torch.utils.data.datapipes",),
    ),
    Family(
        "ignite.metrics", "Ignite metrics accumulate engine output in memory", excluded_modules=("ignite.metrics.gan",)
    ),
)
