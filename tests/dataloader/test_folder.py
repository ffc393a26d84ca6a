"""Keys to labels: decode(key, data) and BlobImageFolder."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from blobtier import BlobNotFound
from blobtier.dataloader import BlobDataset, BlobImageFolder


@pytest.fixture
def folder(client):
    files = {"img/train/dog/b.jpg": b"dog b", "img/train/cat/a.jpg": b"cat a",
             "img/train/cat/sub/c.JPG": b"cat c", "img/train/eel/d.png": b"eel d",
             "img/train/README": b"not in a class", "img/train/dog/notes.txt": b"txt"}
    client.put_many(files)
    return files


def test_image_folder_labels_like_torchvision(client, folder):
    ds = BlobImageFolder("img/train", client=client, extensions=(".jpg", ".png"))
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "eel": 2}
    assert ds.samples == [("img/train/cat/a.jpg", 0), ("img/train/cat/sub/c.JPG", 0),
                          ("img/train/dog/b.jpg", 1), ("img/train/eel/d.png", 2)]
    assert ds.targets == [0, 0, 1, 2]
    assert ds[2] == (b"dog b", 1)
    got = [pair for batch in DataLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
           for pair in batch]
    assert got == [(b"cat a", 0), (b"cat c", 0), (b"dog b", 1), (b"eel d", 2)]


def test_image_folder_decode_and_target_transform(client, folder):
    ds = BlobImageFolder("img/train/", client=client, decode=lambda key, v: (key[-5:], len(v)),
                         target_transform=lambda t: -t)
    assert ds[0] == (("a.jpg", 5), 0)
    assert ("img/train/dog/notes.txt", 1) in ds.samples  # no extensions: every blob
    with pytest.raises(BlobNotFound, match="img/none/"):
        BlobImageFolder("img/none", client=client)


def test_dataset_decode_gets_the_key_by_signature_or_option(client, folder):
    keys = ["img/train/cat/a.jpg", "img/train/dog/b.jpg"]
    by_signature = BlobDataset(keys, client=client, decode=lambda key, view: key.split("/")[2])
    assert [by_signature[0], by_signature[1]] == ["cat", "dog"]
    assert by_signature.__getitems__([1, 0]) == ["dog", "cat"]
    by_option = BlobDataset(keys, client=client, decode=lambda *a: a[0], with_keys=True)
    assert by_option[1] == keys[1]
    assert BlobDataset(keys, client=client, decode=len)[0] == 5  # a builtin: data only
