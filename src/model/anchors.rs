//! Anchors, as torchvision's AnchorGenerator makes them: per level sizes x ratios, centred on
//! `index * stride` (no half-pixel offset), ordered level -> y -> x -> anchor.

use crate::engine::Anchors;

/// Cell anchors of one level, ratio-major as torchvision's `generate_anchors`.
pub fn cell_anchors(sizes: &[f32], ratios: &[f32]) -> Vec<[f32; 4]> {
    let mut out = Vec::with_capacity(sizes.len() * ratios.len());
    for &r in ratios {
        let h_ratio = r.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in sizes {
            let ws = w_ratio * s;
            let hs = h_ratio * s;
            // torch.round rounds half to even
            out.push([
                (-ws / 2.0).round_ties_even(),
                (-hs / 2.0).round_ties_even(),
                (ws / 2.0).round_ties_even(),
                (hs / 2.0).round_ties_even(),
            ]);
        }
    }
    out
}

/// All anchors of one level for a `grid` (h, w) over a padded image of `image` (h, w) pixels.
pub fn level_anchors(
    cell: &[[f32; 4]],
    grid: (usize, usize),
    image: (usize, usize),
    out: &mut Vec<[f32; 4]>,
) {
    let stride_h = (image.0 / grid.0.max(1)) as f32;
    let stride_w = (image.1 / grid.1.max(1)) as f32;
    out.reserve(grid.0 * grid.1 * cell.len());
    for y in 0..grid.0 {
        let sy = y as f32 * stride_h;
        for x in 0..grid.1 {
            let sx = x as f32 * stride_w;
            for a in cell {
                out.push([sx + a[0], sy + a[1], sx + a[2], sy + a[3]]);
            }
        }
    }
}

/// (padded image size, feature grid per level): what the anchors depend on.
type AnchorKey = ((usize, usize), Vec<(usize, usize)>);

/// Anchors for every level, cached by (padded image size, grid sizes): frames of a stream share them.
#[derive(Debug)]
pub struct AnchorGenerator {
    cells: Vec<Vec<[f32; 4]>>,
    key: Option<AnchorKey>,
    levels: Vec<Vec<[f32; 4]>>,
}

impl AnchorGenerator {
    pub fn new(config: &Anchors) -> Self {
        let cells = config
            .sizes
            .iter()
            .zip(&config.aspect_ratios)
            .map(|(s, r)| cell_anchors(s, r))
            .collect();
        AnchorGenerator {
            cells,
            key: None,
            levels: Vec::new(),
        }
    }

    pub fn anchors_per_location(&self) -> usize {
        self.cells.first().map_or(0, Vec::len)
    }

    /// Per-level anchors for this padded image size and these feature grids.
    pub fn get(&mut self, image: (usize, usize), grids: &[(usize, usize)]) -> &[Vec<[f32; 4]>] {
        let key = (image, grids.to_vec());
        if self.key.as_ref() != Some(&key) {
            self.levels = self
                .cells
                .iter()
                .zip(grids)
                .map(|(cell, &g)| {
                    let mut v = Vec::new();
                    level_anchors(cell, g, image, &mut v);
                    v
                })
                .collect();
            self.key = Some(key);
        }
        &self.levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_anchors_match_torchvision() {
        // torchvision AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
        let c = cell_anchors(&[32.0], &[0.5, 1.0, 2.0]);
        assert_eq!(
            c,
            vec![
                [-23.0, -11.0, 23.0, 11.0],
                [-16.0, -16.0, 16.0, 16.0],
                [-11.0, -23.0, 11.0, 23.0]
            ]
        );
    }

    #[test]
    fn level_order_is_y_x_anchor() {
        let cell = cell_anchors(&[16.0], &[1.0, 2.0]);
        let mut v = Vec::new();
        level_anchors(&cell, (2, 3), (64, 96), &mut v);
        assert_eq!(v.len(), 12);
        // stride 32: second location in a row is x=32, y=0
        assert_eq!(
            v[2],
            [32.0 + cell[0][0], cell[0][1], 32.0 + cell[0][2], cell[0][3]]
        );
        // first location of the second row is y=32
        assert_eq!(v[6][1], 32.0 + cell[0][1]);
    }
}
