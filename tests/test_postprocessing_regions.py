"""Regions: derived parcellation (SHIVA.md §9.1), schemes (§9.3), assignment (§9.2), atlas."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.postprocessing import (Atlas, build_regions, derived_parcellation,
                                       find_clusters, outside_brain_mask, warp_atlas)
from shiva_bids.postprocessing.regions import RegionMap, assign_regions, scheme_names
from shiva_bids.volume import Volume

# A line of slabs along x (each fills the y-z cross-section), FreeSurfer labels:
SLABS = [
    (0, 2, 24),  # CSF
    (2, 5, 1028),  # left superior frontal cortex (frontal seed)
    (5, 17, 2),  # left cerebral WM: distances 1..12 from the cortex
    (17, 20, 4),  # left lateral ventricle
    (20, 28, 41),  # right cerebral WM
    (28, 31, 2005),  # right cuneus (occipital seed)
    (31, 33, 24),  # CSF
    (33, 36, 17),  # left hippocampus
    (36, 38, 16),  # brainstem
    (38, 40, 12),  # left putamen
    (40, 42, 50),  # right caudate
    (42, 44, 47),  # right cerebellum cortex
]
# Expected derived labels (§9.1 table) per x.
DERIVED = {
    **{x: 0 for x in (0, 1, 17, 18, 19, 31, 32)},
    **{x: 1 for x in (2, 3, 4)},  # left frontal GM
    **{x: 2 for x in (5, 6, 7)},  # juxtacortical: taxicab <= 3 from the cortex
    **{x: 3 for x in range(8, 15)},  # deep
    **{x: 4 for x in (15, 16)},  # periventricular: 2 dilations of the ventricle
    **{x: 36 for x in (20, 21)},  # right occipital PV (16 + 20)
    **{x: 35 for x in (22, 23, 24)},  # right occipital deep
    **{x: 34 for x in (25, 26, 27)},  # right occipital juxtacortical
    **{x: 33 for x in (28, 29, 30)},  # right occipital GM
    **{x: 43 for x in (33, 34, 35)}, 36: 60, 37: 60, 38: 40, 39: 40, 40: 50, 41: 50,
    42: 57, 43: 57,
}


def _slab_seg(replace: dict[int, int] | None = None) -> Volume:
    data = np.zeros((44, 6, 6), np.int32)
    for start, stop, label in SLABS:
        data[start:stop] = (replace or {}).get(label, label)
    return Volume(data, np.eye(4))


def _profile(volume: Volume) -> dict[int, int]:
    return {x: int(volume.data[x, 3, 3]) for x in range(volume.shape[0])}


def test_derived_parcellation_of_a_slab_phantom():
    derived = derived_parcellation(_slab_seg())
    assert _profile(derived) == DERIVED
    assert np.all(derived.data == derived.data[:, :1, :1])  # constant across each slab


def _names_at(scheme: str, seg: Volume) -> dict[int, str]:
    regions = build_regions(scheme, seg, dseg=seg)
    return {x: regions.names.get(v, "-") for x, v in _profile(regions.labels).items()}


@pytest.mark.parametrize("scheme, expected", [
    ("pvs", {3: "Left Deep WM", 10: "Left Deep WM", 16: "Left Deep WM", 21: "Right Deep WM",
             34: "Left Hippoc.", 36: "Brainstem", 38: "Left Basal Gang.",
             40: "Right Basal Gang.", 42: "Right Cerebellar", 0: "-", 18: "-"}),
    ("wmh", {3: "Left Shallow WM", 7: "Left Shallow WM", 8: "Left Deep WM",
             15: "Left PV WM", 21: "Right PV WM", 23: "Right Deep WM", 26: "Right Shallow WM",
             34: "-", 36: "Brainstem", 38: "Left Deep WM", 40: "Right Deep WM",
             42: "Right Cerebellar"}),
    ("mars", {3: "Left Frontal", 7: "Left Frontal", 8: "Left D&PV WM", 16: "Left D&PV WM",
              21: "Right D&PV WM", 26: "Right Occipital", 29: "Right Occipital",
              34: "Left Hippoc.", 36: "Brainstem", 38: "Left Basal Gang.",
              40: "Right Basal Gang.", 42: "Right Cerebellum"}),
])
def test_scheme_mapping_from_freesurfer_labels(scheme, expected):
    names = _names_at(scheme, _slab_seg())
    assert {x: names[x] for x in expected} == expected


def test_scheme_sizes_and_numbering_follow_shiva():
    assert len(scheme_names("pvs")) == 11 and scheme_names("pvs")[11] == "Brainstem"
    assert len(scheme_names("wmh")) == 9 and scheme_names("wmh")[3] == "Left PV WM"
    mars = scheme_names("mars")
    assert len(mars) == 29 and mars[1] == "Left Frontal" and mars[15] == "Right Frontal"


def test_aseg_without_parcels_uses_unparcellated_lobar_regions():
    seg = _slab_seg({1028: 3, 2005: 42})  # plain aseg cortex
    derived = _profile(derived_parcellation(seg))
    assert [derived[x] for x in (3, 6, 10, 16, 21, 26, 29)] == [61, 62, 63, 64, 84, 82, 81]
    names = _names_at("mars", seg)
    assert names[3] == "Left Lobar" and names[10] == "Left D&PV WM"
    assert names[26] == "Right Lobar"
    assert "Left Frontal" not in build_regions("mars", seg, dseg=seg).names.values()
    assert _names_at("wmh", seg)[6] == "Left Shallow WM"


def test_wm_hypointensities_join_the_wm_they_touch_most():
    data = np.zeros((12, 6, 6), np.int32)
    data[:6] = 2
    data[6:] = 41
    data[4:7, 2:4, 2:4] = 77  # touches left WM on more voxels than right
    data[0:2, 0:5, 0:5] = 1028  # seeds so that WM has a lobe
    data[10:12] = 2028
    derived = derived_parcellation(Volume(data, np.eye(4)))
    blob = derived.data[4:7, 2:4, 2:4]
    # left frontal WM codes, or left callosum: the two WMs touch, as at a SynthSeg callosum
    assert np.isin(blob, [1, 2, 3, 4, 46]).all() and (blob == 46).any()
    assert not np.isin(derived.data[7:10], [1, 2, 3, 4, 46]).any()  # right side stays right


def test_corpus_callosum_and_deep_structures():
    data = np.zeros((20, 5, 5), np.int32)
    data[0:8] = 2
    data[8:10] = 251  # CC: x = 8 nearer left WM, 9 nearer right WM
    data[10:18] = 41
    data[18:20] = 10  # left thalamus
    derived = _profile(derived_parcellation(Volume(data, np.eye(4))))
    assert derived[8] == 46 and derived[9] == 56 and derived[19] == 41


def test_dseg_on_another_grid_is_resampled_to_the_reference():
    seg = _slab_seg()
    reference = Volume(np.zeros((22, 3, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    regions = build_regions("pvs", reference, dseg=seg)
    assert regions.labels.shape == (22, 3, 3)
    assert regions.names[int(regions.labels.data[17, 1, 1])] == "Left Hippoc."  # x = 34 mm


def test_outside_brain_filter_uses_the_segmentation_without_csf():
    seg = _slab_seg()
    prob = np.zeros(seg.shape, np.float32)
    prob[30:33, 2:4, 2:4] = 1.0  # a "lacune" mostly in CSF (x 31, 32), one slab of cortex
    prob[10:12, 2:4, 2:4] = 1.0  # a lacune in deep WM
    prob_volume = seg.with_data(prob)
    brain_with_csf = seg.with_data((seg.data > 0).astype(np.uint8))  # SynthSeg-style mask
    regions = build_regions("mars", seg, dseg=seg, brain=brain_with_csf)
    assert find_clusters(prob_volume, 0.5, 1.0, brain_with_csf).count == 2  # SHiVAi#27
    clusters = find_clusters(prob_volume, 0.5, 1.0, outside_brain_mask(brain_with_csf, regions))
    assert clusters.count == 1 and clusters.labels.data[10, 2, 2] == 1


def _region_map(labels: np.ndarray, names: dict[int, str], priority=()) -> RegionMap:
    return RegionMap(Volume(labels, np.eye(4)), names, "dseg:test", "wmh", None, priority)


def test_assignment_ties_go_to_the_lowest_label_and_background_never_wins():
    regions = np.zeros((4, 4, 4), np.int16)
    clusters = np.zeros((4, 4, 4), np.int32)
    clusters[0, 0, :4] = 1
    regions[0, 0, :2] = 5
    regions[0, 0, 2:] = 3  # 2 votes each: tie -> 3
    clusters[2, 0, :3] = 2
    regions[2, 0, 0] = 7  # 1 vote for 7, 2 for background -> 7
    clusters[3, 3, 3] = 3  # only background -> 0
    winners = assign_regions(clusters, 3, _region_map(regions, {3: "a", 5: "b", 7: "c"}))
    assert winners.tolist() == [3, 7, 0]


def test_wmh_periventricular_priority():
    regions = np.zeros((4, 8, 4), np.int16)
    clusters = np.zeros((4, 8, 4), np.int32)
    clusters[0, :6, 0] = 1
    regions[0, :5, 0] = 2  # deep WM majority
    regions[0, 5, 0] = 7  # touches Right PV WM once -> Right PV WM
    clusters[2, :4, 0] = 2
    regions[2, 0, 0] = 7
    regions[2, 1, 0] = 3  # one voxel each in Left (3) and Right (7) PV WM: tie -> left
    regions[2, 2:4, 0] = 2
    names = scheme_names("wmh")
    region_map = _region_map(regions, names, priority=(3, 7))
    assert assign_regions(clusters, 2, region_map).tolist() == [7, 3]
    assert assign_regions(clusters, 2, _region_map(regions, names)).tolist() == [2, 2]


def test_wmh_regions_from_dseg_carry_the_pv_priority():
    seg = _slab_seg()
    regions = build_regions("wmh", seg, dseg=seg)
    assert [regions.names[p] for p in regions.priority] == ["Left PV WM", "Right PV WM"]
    assert build_regions("mars", seg, dseg=seg).priority == ()


def _atlas() -> tuple[Volume, dict[int, str]]:
    data = np.zeros((20, 10, 10), np.int16)
    data[2:18, 2:8, 2:8] = 1
    data[2:18, 2:8, 5:8] = 2
    affine = np.eye(4)
    affine[0, 3] = -10.0  # x = -10 .. 9 mm: voxels 0-9 are left (x < 0)
    return Volume(data, affine), {1: "Lower", 2: "Upper"}


def test_atlas_lateralised_and_resampled_without_transforms():
    atlas, names = _atlas()
    reference = Volume(np.zeros((10, 5, 5), np.float32),
                       np.array([[2.0, 0, 0, -9.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5],
                                 [0, 0, 0, 1]]))
    regions = build_regions("pvs", reference, atlas=Atlas(atlas, names, "toy"))
    assert regions.source == "atlas:toy" and regions.brain_without_csf is None
    label = regions.labels.data
    assert regions.names[int(label[2, 2, 1])] == "Left Lower"
    assert regions.names[int(label[7, 2, 3])] == "Right Upper"


def test_atlas_warped_with_an_ants_affine(tmp_path):
    ants = pytest.importorskip("ants")
    atlas, names = _atlas()
    # ANTs transforms map fixed (native) points to moving (atlas) points, in LPS: a +3 mm
    # translation along LPS x is -3 mm along RAS x.
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           translation=(3.0, 0.0, 0.0))
    path = str(tmp_path / "shift.mat")
    ants.write_transform(transform, path)
    reference = Volume(np.zeros((20, 10, 10), np.float32), atlas.affine)
    warped = warp_atlas(atlas, reference, [path])
    identity = warp_atlas(atlas, reference)
    assert np.array_equal(identity.data, atlas.data)
    # native voxel i samples atlas voxel i - 3
    assert np.array_equal(warped.data[5:], atlas.data[2:-3])
    # the same transforms bring a segmentation's derived parcellation to another image
    seg = _slab_seg()
    plain = build_regions("pvs", seg, dseg=seg).labels.data
    shifted = build_regions("pvs", seg, dseg=seg, dseg_transforms=[path]).labels.data
    assert np.array_equal(shifted[5:], plain[2:-3]) and shifted.dtype == plain.dtype
    # the inverse of the transform shifts the other way; an Atlas carries both
    back = warp_atlas(atlas, reference, [path], invert=[True])
    assert np.array_equal(back.data[:-5], atlas.data[3:-2])
    regions = build_regions("pvs", reference, atlas=Atlas(atlas, names, "toy", [path],
                                                          lateralize=False))
    assert np.array_equal(regions.labels.data, warped.data)


def test_no_region_source_means_whole_brain_only():
    reference = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    regions = build_regions("pvs", reference)
    assert regions.source == "none" and regions.whole_brain_only and regions.names == {}


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="scheme"):
        build_regions("lobes", Volume(np.zeros((2, 2, 2)), np.eye(4)))


@pytest.fixture(scope="module")
def phantom():
    from fs_phantom import make_aparc_aseg

    seg = make_aparc_aseg((144, 184, 136))
    return seg, derived_parcellation(seg)


def _at(volume: Volume, x: float, y: float, z: float) -> int:
    i, j, k = np.rint(np.linalg.inv(volume.affine) @ [x, y, z, 1.0])[:3].astype(int)
    return int(volume.data[i, j, k])


@pytest.mark.parametrize("point, left_code", [
    ((18, -5, 0), 44),  # between thalamus and putamen/pallidum: internal capsule
    ((33, 5, 0), 45),  # between putamen and insula: external capsule
    ((10, -6, 0), 41),  # thalamus
    ((5, 0, 20), 46),  # corpus callosum
])
def test_capsules_and_callosum_on_a_freesurfer_phantom(phantom, point, left_code):
    seg, derived = phantom
    x, y, z = point
    assert _at(seg, -x, y, z) in (2, 10, 253)  # WM, thalamus or callosum in the input
    assert _at(derived, -x, y, z) == left_code
    assert _at(derived, x, y, z) == parc_right(left_code)


def parc_right(code: int) -> int:
    from shiva_bids.postprocessing.parcellation import right_of

    return right_of(code)


def test_phantom_has_every_derived_structure(phantom):
    seg, derived = phantom
    present = set(np.unique(derived.data).tolist())
    left = {1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 40, 41, 42, 43, 44, 45, 46, 47, 78,
            79, 80}
    assert left | {parc_right(c) for c in left} | {60} <= present
    assert _at(derived, -30, 30, 20) == 3  # the label-77 blob joined left frontal deep WM


def test_scheme_names_of_capsules(phantom):
    seg, derived = phantom
    where = {"ic": (-18, -5, 0), "ec": (-33, 5, 0)}
    expected = {"pvs": ("Left Basal Gang.", "Left Basal Gang."),
                "wmh": ("Left Deep WM", "Left Shallow WM"),
                "mars": ("Left Int. Caps.", "Left Ext. Caps.")}
    for scheme, names in expected.items():
        regions = build_regions(scheme, seg, dseg=seg, derived=derived)
        got = tuple(regions.names[_at(regions.labels, *where[k])] for k in ("ic", "ec"))
        assert got == names
    mars = build_regions("mars", seg, dseg=seg, derived=derived)
    ic_pv = derived.data == 80
    assert ic_pv.any()
    assert {mars.names[v] for v in np.unique(mars.labels.data[ic_pv])} == {"Left Int. Caps."}


def test_isotropic_resampling_of_an_anisotropic_segmentation():
    from shiva_bids.postprocessing.grids import isotropic_1mm

    data = np.zeros((10, 10, 5), np.int16)
    data[:, :, 2] = 7
    seg = Volume(data, np.diag([1.0, 1.0, 2.0, 1.0]))
    iso = isotropic_1mm(seg)
    assert iso.shape == (10, 10, 10) and np.allclose(iso.zooms, 1.0)
    assert (iso.data[:, :, 4:6] == 7).all() and (iso.data[:, :, :4] == 0).all()
    assert isotropic_1mm(Volume(data, np.diag([0.95, 1.0, 1.05, 1.0]))).shape == data.shape


def test_synthseg_callosum_from_the_seam_between_hemispheres():
    from fs_phantom import make_aparc_aseg

    seg = make_aparc_aseg((144, 184, 136), synthseg=True)
    assert not np.isin(seg.data, [251, 252, 253, 254, 255]).any()
    derived = derived_parcellation(seg)
    assert _at(derived, -5, 0, 20) == 46 and _at(derived, 5, 0, 20) == 56
    assert _at(derived, -5, 25, 20) == 46  # along the whole callosum
    assert _at(derived, -5, 0, 45) not in (46, 56)  # WM far above it stays lobar
    assert _at(derived, -18, -5, 0) == 44  # capsules keep their labels
    mars = build_regions("mars", seg, dseg=seg, derived=derived)
    assert mars.names[_at(mars.labels, 5, 0, 20)] == "Right Corp. Call."


# --- issue #17: one parcellation per unit, region sources, standard groups -------------------

def test_parcellation_built_once_gives_the_dseg_regions_on_any_grid():
    from shiva_bids.postprocessing.regions import make_parcellation
    seg = _slab_seg()
    parcellation = make_parcellation(seg, "dseg:bids:raw:x")
    coarse = Volume(np.zeros((22, 3, 3), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    for reference in (seg, coarse):
        direct = build_regions("mars", reference, dseg=seg, dseg_source="bids:raw:x")
        shared = build_regions("mars", reference, parcellation=parcellation)
        assert np.array_equal(direct.labels.data, shared.labels.data)
        assert shared.source == direct.source == "dseg:bids:raw:x"
        assert shared.brain_without_csf is not None and shared.provenance is None


def test_atlas_parcellation_is_approximate_and_says_where_it_comes_from():
    from shiva_bids.postprocessing import cluster_census, region_stats
    from shiva_bids.postprocessing.regions import make_parcellation
    seg = _slab_seg()
    parcellation = make_parcellation(seg, "atlas:DesikanKilliany", approximate=True,
                                     provenance={"Name": "DesikanKilliany", "License": "FS"})
    regions = build_regions("wmh", seg, parcellation=parcellation)
    assert regions.source == "atlas:DesikanKilliany" and regions.priority
    # approximate regions never decide what is outside the brain: the brain mask does
    brain = seg.with_data((seg.data > 0).astype(np.uint8))
    assert outside_brain_mask(brain, regions) is brain
    prob = seg.with_data(np.zeros(seg.shape, np.float32))
    prob.data[10:12, 2:4, 2:4] = 0.9  # a blob in left deep WM
    clusters = find_clusters(prob, 0.5, 1.0, brain)
    census = cluster_census(clusters, prob, None, regions, "WMH")
    stats = region_stats(census, regions, "WMH", 1000.0)
    assert census.column("region") == ["Left Deep WM"]
    assert stats.metadata["RegionSource"] == "atlas:DesikanKilliany"
    assert stats.metadata["RegionAtlas"]["License"] == "FS"


@pytest.mark.parametrize("mode, has_dseg, expected", [
    ("auto", True, "derivatives"), ("auto", False, "atlas"), ("atlas", True, "atlas"),
    ("none", True, "none"), ("derivatives", True, "derivatives")])
def test_region_source_precedence(mode, has_dseg, expected):
    from shiva_bids.postprocessing.sources import choose_source, needs_template_registration
    assert choose_source(mode, has_dseg) == expected
    assert needs_template_registration(mode, has_dseg) == (expected == "atlas")


def test_explicit_derivatives_without_a_segmentation_fails_the_unit():
    from shiva_bids.errors import MissingInputError
    from shiva_bids.postprocessing.sources import choose_source, unit_parcellation
    with pytest.raises(MissingInputError, match="sub-01: --regions derivatives"):
        choose_source("derivatives", False, "sub-01")
    grid = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    assert unit_parcellation("none", "sub-01", None, "", None, grid, None) is None
    with pytest.raises(MissingInputError, match="no template registration"):
        unit_parcellation("atlas", "sub-01", None, "", None, grid, None)


def test_standard_groups_add_left_and_right_and_stay_na_without_regions():
    from shiva_bids.postprocessing.standard import standard_descriptions, standard_values
    regions = {"Whole brain": {"n_clusters": 9, "total_volume_mm3": 90.0},
               "Left Basal Gang.": {"n_clusters": 2, "total_volume_mm3": 5.0},
               "Right Basal Gang.": {"n_clusters": 3, "total_volume_mm3": 7.5},
               "Left Deep WM": {"n_clusters": 4, "total_volume_mm3": 0.0},
               "Right Hippoc.": {"n_clusters": 0, "total_volume_mm3": 0.0}}
    assert standard_values("PVS", regions) == {
        "basal_ganglia_count": 5, "basal_ganglia_volume_mm3": 12.5,
        "centrum_semiovale_count": 4, "centrum_semiovale_volume_mm3": 0.0}
    mars = standard_values("CMB", {"Whole brain": {}, "Right Hippoc.": {"n_clusters": 1},
                                   "Brainstem": {"n_clusters": 2}, "Left Thalamus": {}})
    assert (mars["lobar_count"], mars["deep_count"], mars["infratentorial_count"]) == (1, 0, 2)
    assert set(standard_values("WMH", {"Whole brain": {"n_clusters": 3}}).values()) == {None}
    described = standard_descriptions()
    for name in ("PVS_basal_ganglia_count", "PVS_centrum_semiovale_count",
                 "WMH_periventricular_volume_mm3", "WMH_deep_volume_mm3",
                 "CMB_lobar_count", "CMB_deep_count", "CMB_infratentorial_count",
                 "LAC_deep_count"):
        assert described[name]["Description"]


def test_atlas_grid_is_the_brain_box_on_the_conformed_grid():
    from shiva_bids.postprocessing.parcellation import MARGIN
    from shiva_bids.postprocessing.sources import atlas_grid
    data = np.zeros((60, 60, 60), np.uint8)
    data[20:30, 25:35, 28:31] = 1
    affine = np.eye(4)
    affine[:3, 3] = [-30, -30, -30]
    grid = atlas_grid(Volume(data, affine))
    assert grid.shape == (10 + 2 * MARGIN, 10 + 2 * MARGIN, 3 + 2 * MARGIN)
    assert np.allclose(grid.affine[:3, 3], [20 - MARGIN - 30, 25 - MARGIN - 30, 28 - MARGIN - 30])


def test_atlas_alignment_gives_the_same_bytes_every_run_and_is_reused_from_the_user_cache(
        tmp_path, monkeypatch):
    """The template -> atlas registration runs in a single-threaded ITK worker: two runs into
    fresh caches write the same transforms (with several ITK threads they differed, and so did
    the atlas regions: issue #19). A run in another work folder then finds the alignment in
    the user cache: no registration, the same bytes, copied into its work folder (issue #24)."""
    from shiva_bids.postprocessing import atlases
    from shiva_bids.preprocessing.templates import load_template
    atlas, template = atlases.default_atlas(), load_template()
    brain = atlases.template_brain(template)
    registered = []
    compute = atlases.compute_alignment
    monkeypatch.setattr(atlases, "compute_alignment",
                        lambda *args: (registered.append(args[2]), compute(*args))[1])

    def align(work: str, user_cache: str):
        monkeypatch.setenv("SHIVA_BIDS_CACHE_DIR", user_cache)
        return atlases.align_atlas(atlas, template.name, brain, tmp_path / work / "atlas",
                                   seed=3)

    runs = [align("run0", str(tmp_path / "user")), align("run1", "none")]
    assert len(registered) == 2  # the second run could not see the first's cache
    warps = [np.asarray(nib.load(str(transforms[0])).dataobj) for transforms in runs]
    assert np.array_equal(*warps) and warps[0].std() > 0
    assert runs[0][1].read_bytes() == runs[1][1].read_bytes()
    reused = align("run2", str(tmp_path / "user"))
    assert len(registered) == 2  # no third registration
    assert all(path.is_relative_to(tmp_path / "run2") for path in reused)
    for path, first in zip(reused, runs[0]):
        assert path.read_bytes() == first.read_bytes()
    # The preprocessing's prefetch: in a worker, into the user cache alone; the same bytes.
    from shiva_bids.preprocessing.workers import Workers
    monkeypatch.setenv("SHIVA_BIDS_CACHE_DIR", str(tmp_path / "prefetched"))
    with Workers(1) as worker:
        worker.submit(atlases.prefetch_alignment, None, 3).result()
    prefetched = {path.name: path for path in (tmp_path / "prefetched").glob("*/*")}
    assert np.array_equal(np.asarray(nib.load(str(prefetched["1Warp.nii.gz"])).dataobj),
                          warps[0])
    assert prefetched["0GenericAffine.mat"].read_bytes() == runs[0][1].read_bytes()
