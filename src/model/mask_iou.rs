//! Mask IoU on box-local masks ([`InstanceMask`]): only the overlap of the two boxes is visited, so
//! comparing a frame's detections costs little more than their boxes' overlaps.

use super::paste::InstanceMask;

/// Pixels set in both masks, with `a` moved by (dx, dy) frame pixels first. Only the overlap of the two
/// boxes is visited.
pub fn intersection_shifted(a: &InstanceMask, dx: i64, dy: i64, b: &InstanceMask) -> usize {
    let (ax0, ay0) = (a.x0 as i64 + dx, a.y0 as i64 + dy);
    let (bx0, by0) = (b.x0 as i64, b.y0 as i64);
    let x0 = ax0.max(bx0);
    let y0 = ay0.max(by0);
    let x1 = (ax0 + a.width as i64).min(bx0 + b.width as i64);
    let y1 = (ay0 + a.height as i64).min(by0 + b.height as i64);
    if x0 >= x1 || y0 >= y1 {
        return 0;
    }
    let mut n = 0usize;
    for y in y0..y1 {
        let ra = ((y - ay0) as usize) * a.width;
        let rb = ((y - by0) as usize) * b.width;
        let sa = &a.data[ra + (x0 - ax0) as usize..ra + (x1 - ax0) as usize];
        let sb = &b.data[rb + (x0 - bx0) as usize..rb + (x1 - bx0) as usize];
        n += sa
            .iter()
            .zip(sb)
            .filter(|(&p, &q)| p != 0 && q != 0)
            .count();
    }
    n
}

/// IoU of two masks whose areas are known, `a` moved by (dx, dy).
pub fn mask_iou_shifted(
    a: &InstanceMask,
    area_a: usize,
    dx: i64,
    dy: i64,
    b: &InstanceMask,
    area_b: usize,
) -> f32 {
    let inter = intersection_shifted(a, dx, dy, b);
    let union = area_a + area_b - inter;
    if union == 0 {
        0.0
    } else {
        inter as f32 / union as f32
    }
}

pub fn mask_iou(a: &InstanceMask, b: &InstanceMask) -> f32 {
    mask_iou_shifted(a, a.area(), 0, 0, b, b.area())
}
