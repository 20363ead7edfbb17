//! Our ROIAlign against torchvision.ops.roi_align / MultiScaleRoIAlign on the committed fixtures:
//! every case (all levels, boxes inside / partly / fully outside, tiny and huge, aligned false/true,
//! sampling ratio 0, 2 and 3) bit-identical, run through the model's device seam (the CPU device).

mod common;

use common::roi_align::{max_abs_diff, Fixtures};
use maskstream::model::device::{Cpu, Device};
use maskstream::model::roi_align;

#[test]
fn level_assignment_matches_torchvision() {
    let set = Fixtures::load();
    let levels = set.levels.as_slice().unwrap();
    for (i, &expected) in levels.iter().enumerate() {
        let b = set.bbox(i);
        let lvl = roi_align::map_level(&b, 2, 5, 224.0, 4.0);
        assert_eq!(lvl as i64, expected, "roi {i} {b:?}");
    }
}

#[test]
fn every_case_is_bit_identical() {
    let set = Fixtures::load();
    let maps = set.maps();
    assert!(set.cases.len() >= 30);
    let mut device: Box<dyn Device> = Box::new(Cpu::default());
    device.load_features(&maps).unwrap();
    let mut values = 0usize;
    for case in &set.cases {
        let c = set.case(case);
        let mut out = vec![0.0; c.expected.len()];
        device
            .roi_align(&maps, &c.rois, &c.params, &mut out)
            .unwrap();
        let differ = c
            .expected
            .iter()
            .zip(&out)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{}: {differ} of {} values differ from torchvision (max |delta| {:e})",
            c.name,
            out.len(),
            max_abs_diff(&c.expected, &out)
        );
        values += out.len();
    }
    println!(
        "roi_align: {} cases, {values} values, all bit-identical to torchvision",
        set.cases.len()
    );
}
