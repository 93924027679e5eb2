"""The weights registry: every fact about a set of ResNet50 v1.5 weights, as data.

Modelled on torchvision's ``Weights`` enum and timm's pretrained configs: one frozen
:class:`Weights` entry bundles where the file comes from, how images are preprocessed for it,
its class layout and categories, its published metrics, its size and whether MLPerf's closed
division accepts it. Code asks an entry; nothing else compares weights kinds as strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from resnet50.core.errors import InvalidInputError


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: decode, resize, crop, then ``(x / scale - mean) / std``."""

    name: str
    decoder: str  # "opencv": cv2.imread(IMREAD_COLOR), EXIF applied; "pil": PIL.Image.open(...).convert("RGB")
    interpolation: str  # "area": cv2 INTER_AREA; "bilinear": PIL BILINEAR (antialiased when shrinking)
    crop_rounding: str  # "floor": int((h - crop) / 2), as MLPerf; "round": round((h - crop) / 2), as torchvision
    resize: int = 256  # the short side after the aspect-preserving resize; long side = int(resize * long / short)
    crop: int = 224
    color_order: str = "RGB"  # channel order of the model's input
    scale: float = 1.0  # the 0..255 pixel values are divided by it first (255: torchvision's ToTensor)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted after scaling, per channel (RGB)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # divides last

    @property
    def divides(self) -> bool:
        """Whether scaling or std division applies (the MLPerf preset only subtracts means)."""
        return self.scale != 1.0 or any(s != 1.0 for s in self.std)


@dataclass(frozen=True)
class ClassLayout:
    """The classifier's outputs: ``count`` columns, the first one background when ``background``.

    Whatever the layout, reported ``class_id``s run 1..N over the foreground classes, and
    ``imagenet_index = class_id - 1``.
    """

    count: int
    background: bool

    @property
    def foreground(self) -> int:
        return self.count - int(self.background)

    @property
    def first(self) -> int:
        """The output column of class id 1."""
        return int(self.background)

    def column(self, class_id: int) -> int:
        """The output column of a 1-based class id."""
        return class_id - 1 + self.first


@dataclass(frozen=True)
class Metrics:
    """Published accuracy on the 50,000 ImageNet validation images, and where it is published."""

    top1: float
    top5: float | None
    source: str


@dataclass(frozen=True)
class WeightsFile:
    """Where a weights file comes from and how to check it."""

    url: str
    filename: str
    format: str  # "onnx" or "torch-state-dict"
    md5: str | None = None
    sha256_prefix: str | None = None  # torchvision names its files by the first 8 hex digits of the sha256


@dataclass(frozen=True)
class Weights:
    """One set of weights and everything that goes with them."""

    name: str
    summary: str
    preprocessing: Preprocessing
    classes: ClassLayout
    categories: str  # "imagenet-1k", or "user" (names from --labels)
    file: WeightsFile | None = None  # None: built by the package (synthetic) or supplied by the user
    metrics: Metrics | None = None
    gmac: float = 4.09
    params: int = 25_557_032
    synthetic: bool = False
    mlperf_division: str | None = None  # "closed" where MLPerf's closed division accepts the file
    notes: str = ""
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def format(self) -> str:
        return self.file.format if self.file else "onnx"

    def to_dict(self) -> dict:
        """The entry as plain data (``resnet50 weights --json``)."""
        out = asdict(self)
        out.pop("aliases")
        out["classes"]["foreground"] = self.classes.foreground
        return out


MLPERF_PREPROCESSING = Preprocessing(
    name="mlperf",
    decoder="opencv",
    interpolation="area",
    crop_rounding="floor",
    resize=int(100.0 * 224 / 87.5),  # 256, exactly as the MLPerf reference computes it
    mean=(123.68, 116.78, 103.94),
)


def torchvision_preprocessing(resize: int) -> Preprocessing:
    """torchvision's ``ImageClassification`` preset for ResNet50 weights."""
    return Preprocessing(
        name=f"torchvision-resize{resize}",
        decoder="pil",
        interpolation="bilinear",
        crop_rounding="round",
        resize=resize,
        scale=255.0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


MLPERF_CLASSES = ClassLayout(count=1001, background=True)
IMAGENET_CLASSES = ClassLayout(count=1000, background=False)
_MLPERF_SOURCE = "https://github.com/mlcommons/inference/tree/master/vision/classification_and_detection"
_TORCHVISION_SOURCE = "https://docs.pytorch.org/vision/stable/models/generated/torchvision.models.resnet50.html"
_MLPERF_PARAMS = 25_557_032 + 2048 + 1  # one more (background) output than torchvision's 1000


def _mlperf(name: str, url: str, md5: str, opset: int) -> Weights:
    return Weights(
        name=name,
        summary=f"MLPerf inference ResNet50 v1.5 ONNX release, opset {opset} (TensorFlow-trained, 1001 classes)",
        preprocessing=MLPERF_PREPROCESSING,
        classes=MLPERF_CLASSES,
        categories="imagenet-1k",
        file=WeightsFile(url=url, filename="resnet50_v1.onnx", format="onnx", md5=md5),
        metrics=Metrics(top1=76.456, top5=None, source=_MLPERF_SOURCE),
        params=_MLPERF_PARAMS,
        mlperf_division="closed",
    )


def _torchvision(name: str, filename: str, resize: int, metrics: Metrics, **extra) -> Weights:
    return Weights(
        name=name,
        summary=f"torchvision ResNet50 checkpoint {filename} (PyTorch state dict, 1000 classes)",
        preprocessing=torchvision_preprocessing(resize),
        classes=IMAGENET_CLASSES,
        categories="imagenet-1k",
        file=WeightsFile(
            url=f"https://download.pytorch.org/models/{filename}",
            filename=filename,
            format="torch-state-dict",
            sha256_prefix=filename.rsplit("-", 1)[1].split(".")[0],
        ),
        metrics=metrics,
        **extra,
    )


#: The published files, one row each: MLPerf's ONNX releases (name, URL, md5, opset) ...
_MLPERF_FILES = (
    (
        "mlperf-opset11",
        "https://zenodo.org/record/4735647/files/resnet50_v1.onnx",
        "f6a4da60cd5f084d97efc2c1ddb10beb",
        11,
    ),
    (
        "mlperf-opset8",
        "https://zenodo.org/record/2592612/files/resnet50_v1.onnx",
        "a638cf028b5870da29e09ccc2f7182e7",
        8,
    ),
)
#: ... and torchvision's state dicts (name, file, resize, top-1, top-5, source, MLPerf division, notes).
_TORCHVISION_FILES = (
    ("torchvision-v1", "resnet50-0676ba61.pth", 256, 76.130, 92.862, _TORCHVISION_SOURCE, "open",
     "MLPerf's PyTorch reference file resnet50-19c8e357.pth (76.014%) is this family: see mlperf-pytorch"),
    ("torchvision-v2", "resnet50-11ad3fa6.pth", 232, 80.858, 95.434, _TORCHVISION_SOURCE, "open",
     "trained with torchvision's newer recipe; its weights differ from MLPerf's reference"),
    ("mlperf-pytorch", "resnet50-19c8e357.pth", 256, 76.014, None, _MLPERF_SOURCE, "closed",
     "the file MLPerf's PyTorch reference implementation runs (torchvision 0.8.2's resnet50)"),
)  # fmt: skip

REGISTRY: dict[str, Weights] = {
    w.name: w
    for w in (
        *(_mlperf(*row) for row in _MLPERF_FILES),
        *(
            _torchvision(name, filename, resize, Metrics(top1, top5, source), mlperf_division=division, notes=notes)
            for name, filename, resize, top1, top5, source, division, notes in _TORCHVISION_FILES
        ),
        Weights(
            name="synthetic",
            summary="the exact v1.5 graph with seeded synthetic weights: same compute, meaningless labels",
            preprocessing=MLPERF_PREPROCESSING,
            classes=MLPERF_CLASSES,
            categories="imagenet-1k",
            params=_MLPERF_PARAMS,
            synthetic=True,
        ),
    )
}

#: The entry used when nothing is named and no MLPerf file is present.
DEFAULT = "mlperf-opset11"


def get(name: str | Weights) -> Weights:
    """The registry entry called ``name`` (an entry passes through)."""
    if isinstance(name, Weights):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInputError(f"weights {name!r} are not one of {', '.join(REGISTRY)}") from None


def by_md5(md5: str) -> Weights | None:
    """The entry whose published file has this md5, if any."""
    return next((w for w in REGISTRY.values() if w.file and w.file.md5 == md5), None)


def by_sha256(sha256: str) -> Weights | None:
    """The entry whose published file's sha256 starts with its name's hash prefix, if any."""
    return next(
        (w for w in REGISTRY.values() if w.file and w.file.sha256_prefix and sha256.startswith(w.file.sha256_prefix)),
        None,
    )


def with_classes(weights: Weights, count: int) -> Weights:
    """A fine-tune of ``weights``: the same preprocessing, ``count`` classes named by the user."""
    from dataclasses import replace

    if count == weights.classes.count:
        return weights
    return replace(
        weights,
        classes=ClassLayout(count=count, background=False),
        categories="user",
        metrics=None,
        params=weights.params - (weights.classes.count - count) * 2049,
        mlperf_division=None,
    )
