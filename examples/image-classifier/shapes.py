"""Pictures of shapes to train and try the classifier on: made here, never downloaded."""

import io
import random

from PIL import Image, ImageDraw

CLASSES = ["circle", "square", "triangle"]


def draw(kind: str, rng: random.Random, size: int = 96) -> Image.Image:
    """One RGB picture of ``kind`` on a noisy background, at a random place, size and colour."""
    background = tuple(rng.randint(0, 120) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    for _ in range(30):  # speckles, so that the model looks at the shape
        x, y = rng.randrange(size), rng.randrange(size)
        pen.point((x, y), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    colour = tuple(rng.randint(150, 255) for _ in range(3))
    extent = rng.randint(size // 3, size // 2)
    x0, y0 = rng.randint(4, size - extent - 4), rng.randint(4, size - extent - 4)
    box = (x0, y0, x0 + extent, y0 + extent)
    if kind == "circle":
        pen.ellipse(box, fill=colour)
    elif kind == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent // 2, y0)],
                    fill=colour)
    return image


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


if __name__ == "__main__":
    # Sample requests: python examples/image-classifier/shapes.py [FOLDER] → circle.jpg, …
    import os
    import sys

    folder = sys.argv[1] if len(sys.argv) > 1 else "."
    rng = random.Random(7)
    for kind in CLASSES:
        path = os.path.join(folder, f"{kind}.jpg")
        with open(path, "wb") as f:
            f.write(jpeg(draw(kind, rng)))
        print(path)
