//! Shared helpers for the integration tests: the vendored test images and crafted bad inputs.

#![allow(dead_code)]

use std::path::PathBuf;

/// `models/testdata/`.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The bytes of a file in `testdata/`.
pub fn read(name: &str) -> Vec<u8> {
    let path = testdata().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of the reference: image, rank-ordered (class id, probability).
pub struct Reference {
    pub image: String,
    pub top5: Vec<(usize, f32)>,
}

/// `testdata/efficientnet-lite0.reference.tsv`, in file order.
pub fn reference() -> Vec<Reference> {
    let text = String::from_utf8(read("efficientnet-lite0.reference.tsv")).expect("utf-8");
    let mut rows: Vec<Reference> = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "bad reference line {line:?}");
        let class_id: usize = fields[2].parse().expect("class id");
        let probability: f32 = fields[3].parse().expect("probability");
        match rows.last_mut() {
            Some(row) if row.image == fields[0] => row.top5.push((class_id, probability)),
            _ => rows.push(Reference {
                image: fields[0].to_owned(),
                top5: vec![(class_id, probability)],
            }),
        }
    }
    rows
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG whose header declares `width` x `height` RGB pixels, with an empty image stream.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}
