"""Every bundle: `verify_metadata` against MONAI's schema, `verify_net_in_out`, and `ckpt_export` to
TorchScript with outputs equal to the PyTorch network's."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.bundle_utils import REPO, SHARED_SCHEMA, copy_bundle, run_cmd

BUNDLES = ["lung_nodule_ct_segmentation", "lung_nodule_ct_classification", "lung_nodule_ct_two_stage_detection"]


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_conforms_to_the_bundle_schema(name):
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"{SHARED_SCHEMA} is absent (it ships beside the repository in CI); the schema cannot be downloaded offline")
    out = run_cmd([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                   str(REPO / "bundles" / name / "configs" / "metadata.json"), "--filepath", str(SHARED_SCHEMA)])
    assert "verified with no error" in out


@pytest.mark.parametrize("name", BUNDLES)
def test_network_matches_its_metadata(name):
    configs = REPO / "bundles" / name / "configs"
    out = run_cmd([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
                   "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json")])
    assert "verified with no error" in out


@pytest.mark.parametrize(
    "name, shape",
    [("lung_nodule_ct_segmentation", (1, 1, 64, 64, 48)), ("lung_nodule_ct_classification", (3, 1, 48, 48, 48))],
)
def test_torchscript_export_gives_the_same_outputs(tmp_path, name, shape):
    from monai.bundle import ConfigParser

    bundle = copy_bundle(name, tmp_path)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")  # weights as training writes them
    run_cmd([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(bundle / "models" / "model.ts"),
             "--ckpt_file", str(bundle / "models" / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
             "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle)])
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def preprocessing_inputs(tmp_path_factory):
    """The shared real chest CT (its DICOM series, as `detect` reads a folder) and a synthetic phantom (.mhd)."""
    from monai_lung.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("prep")
    generate_dataset(root / "data", num_scans=1, seed=11, size=96, num_subsets=1)
    inputs = [str(next((root / "data").glob("subset0/*.mhd")))]
    real = REPO.parent / "shared" / "real_ct" / "LIDC-IDRI-0001" / "dicom"
    if real.is_dir():
        inputs.append(str(real))
    return inputs


def test_every_bundle_preprocesses_as_the_python_chain(preprocessing_inputs):
    """One preprocessing: each bundle's ``preprocessing`` (what `detect`, MONAI Label and bundle inference run) gives
    exactly what ``ct_preprocessing`` (what the crop bank, the hard-negative miner and stage-2 scoring run) gives with
    the bundle's ``spacing`` and ``hu_window``, which are the chain's defaults: the same voxels, grid and world frame."""
    import numpy as np

    from monai_lung.networks import bundle_parser
    from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW, DEFAULT_SPACING, ct_preprocessing

    reference = ct_preprocessing("image")
    expected = {path: reference({"image": path})["image"] for path in preprocessing_inputs}
    for name in BUNDLES:
        parser = bundle_parser(REPO / "bundles" / name)
        assert tuple(parser.get_parsed_content("spacing")) == DEFAULT_SPACING, name
        assert tuple(parser.get_parsed_content("hu_window")) == DEFAULT_HU_WINDOW, name
        chain = parser.get_parsed_content("preprocessing")
        for path, want in expected.items():
            got = chain({"image": path})["image"]
            assert got.shape == want.shape and got.dtype == want.dtype, (name, path)
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=f"{name} {path}")
            np.testing.assert_array_equal(got.affine.numpy(), want.affine.numpy())
            assert got.meta.get("space") == want.meta.get("space")
    assert len(preprocessing_inputs) == 2 or not (REPO.parent / "shared").is_dir()  # the real scan is checked wherever it ships
