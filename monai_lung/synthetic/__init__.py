"""Synthetic chest CT in LUNA16's layout: the built-in data set for training, detection, evaluation and tests.

    from monai_lung.synthetic import generate_dataset, generate_scan, SyntheticScan
    summary = generate_dataset(out_dir, num_scans=30, seed=0)          # subsetK/<uid>.mhd/.raw + 3 CSVs
    scan = generate_scan(numpy.random.default_rng(0), size=64)        # one scan in memory

Images are int16 HU (air -1000, clipped to [-1024, 3071]) with an identity direction; all coordinates are
world LPS millimetres (ITK physical points: +x patient left, +y posterior, +z head), exactly like LUNA16's
``.mhd`` files and CSVs. ``sitk.GetArrayFromImage(image)`` is (z, y, x) and voxel ``[iz, iy, ix]`` sits at
``origin + (ix, iy, iz) * spacing``.

Geometry
--------
``size`` is the in-plane matrix. In-plane spacing is always U(0.6, 0.9) mm and slice spacing one of
1.0/1.25/1.5/2.0/2.5 mm (mean about 1.8 mm), i.e. always realistic voxels; the z extent is U(260, 340) mm
times ``size / 512``. A default scan is therefore 512 x 512 x 105–340 slices (about 190 on average), and a
``size=64`` test scan is a *miniature patient*: the field of view (``size`` x spacing) shrinks and the whole
anatomy scales with it, while the voxels, the HU values, the 3 mm lower bound of nodule diameters and the
thinnest vessels keep their real size. Nodules are capped at half a hemithorax width (30 mm at default size,
about 5–6 mm at size 64, so ground-glass nodules, which need 5 mm, appear from size ~96 on); vessel radii
shrink less than the body (a floor of 0.25x) and miniature lungs get fewer vessel trunks, so small scans still
show a sparse vessel tree. Origins are like LUNA16's: x and y near -FOV/2 (about -140 to -250 mm), z in
[-330, -60] mm. Why not keep the body and scale the voxels instead: 5 mm voxels would make a 3 mm nodule a
fraction of a voxel, and tests that resample to ~1 mm would blow small scans up again.

Anatomy (see :mod:`.anatomy`, :mod:`.vessels`, :mod:`.nodules`)
--------------------------------------------------------------
A super-elliptic body (skin, subcutaneous fat ~-100 HU, muscle ~45 HU) on a curved table; a rib band of
obliquely running ribs (several rib cross-sections per slice), costal cartilage and sternum; a vertebral body
with discs, the spinal canal and posterior elements; in the thoracic cavity the mediastinum (fat with the
trachea, oesophagus, aorta, vena cava, pulmonary trunk), a tilted ellipsoidal heart in pericardial fat, liver
and upper abdomen below two diaphragm domes (the right one higher), and the two lungs: what is left of the
cavity, narrowing to rounded apices, at U(-875, -825) HU with smooth texture and a front-to-back density
gradient. In each lung nine arterial and venous trunks (aimed at k-means centres of the lung, so that apex and
bases are supplied) grow into trees of tapering tubes: radius about 4–6 mm at the hilum down to about half a
voxel, 10–15 generations, 3 000–8 000 segments per scan, Murray-like radius split, kept inside the lung.
Main and lobar bronchi (air in a soft-tissue wall) run beside the large arteries. Vessel cross-sections are
the nodule-like blobs that make detection hard. Nodules: Poisson(1.5) per scan (at most 6; about a quarter of
the scans have none), kinds solid / juxta-pleural / juxta-vascular / ground-glass, 3–30 mm with LUNA16's
size distribution (median about 6.7 mm, 5% under 4 mm; ``nodules.sample_diameter``); findings under 3 mm go
to ``annotations_excluded.csv``. Finally a separable Gaussian point-spread function (in-plane sigma
0.35–0.5 mm, along z 0.3–0.4 of the slice spacing) and Gaussian noise added before it, so that it is
correlated like CT noise, of 15–30 HU standard deviation.

Opt-in extras (the defaults write the same scans as without them): lung masses of 3-8 cm, central or peripheral
(``masses=``, :mod:`.masses`), and scans drawn on a fixed thin slice grid then written as thicker reconstructions
(``slice_spacing_mm=``, ``slice_thickness_mm=``: slab averages, :mod:`monai_lung.transforms.thick_slices`), e.g. the
same chests at 1 mm and at 5 mm.

Candidates (``candidates.csv``): every nodule as class 1; class 0 at vessel centrelines (half at
bifurcations), random lung points and chest-wall points just outside the pleura, about 20–50 per default scan.

Speed: everything is drawn in bounding boxes or on pixel subsets with float32 numpy; about 2–2.5 s per
default-size scan including writing it (1–3 s depending on the slice count) and about 0.05 s at ``size=64``,
on one core of a shared 2-core machine. Disk: about 90 MB per default-size scan (int16, uncompressed, like
LUNA16).
"""

from monai_lung.synthetic.dataset import generate_dataset
from monai_lung.synthetic.geometry import UID_PREFIX, ScanGeometry, random_seriesuid, sample_geometry
from monai_lung.synthetic.nodules import CENTRE_HU_RANGE, KINDS, NODULE_HU
from monai_lung.synthetic.scan import SyntheticScan, generate_scan

__all__ = [
    "generate_dataset",
    "generate_scan",
    "SyntheticScan",
    "ScanGeometry",
    "sample_geometry",
    "random_seriesuid",
    "UID_PREFIX",
    "KINDS",
    "NODULE_HU",
    "CENTRE_HU_RANGE",
]
