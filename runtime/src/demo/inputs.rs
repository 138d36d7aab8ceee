//! The demo's inputs on local disk, before they are uploaded: the digits test split (the models'
//! own seeded 80/20 split, so none of these digits was trained on), one file per digit, and the
//! photos.
//!
//! Owns: [`write_digits`] (file `NNNN.txt`: the 64 pixel values and the label, comma-separated,
//! the format `digits-cnn` reads; the label is ignored by the model and read back here for the
//! accuracy) and [`copy_photos`] (the PNG and JPEG files of a directory, sorted, nothing else).
//! Must never: write outside the directory it is given, or take a file that is not an image as a
//! photo (a stray file would be an input that cannot succeed).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use idunno_models::digits::{Dataset, TrainConfig};

use super::{DemoError, fail};

/// Most photos taken from the photos directory.
pub const PHOTOS_MAX: usize = 1000;
/// Largest photo copied, in bytes.
const PHOTO_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The digits test split, as the models' training holds it out.
pub fn test_split() -> Result<Dataset, DemoError> {
    let config = TrainConfig::default();
    let data = Dataset::bundled().map_err(|e| DemoError(format!("digits data set: {e}")))?;
    let (_train, test) = data.split(config.seed, config.test_percent);
    Ok(test)
}

/// One digit's file: 64 values and the label.
pub fn digit_line(pixels: &[f32], label: u8) -> String {
    let mut fields: Vec<String> = pixels.iter().map(|v| format!("{v}")).collect();
    fields.push(label.to_string());
    format!("{}\n", fields.join(","))
}

/// The label of a digit file written by [`digit_line`] (its last field).
pub fn label_of(text: &str) -> Option<u8> {
    let last = text.trim().rsplit(',').next()?;
    last.trim().parse().ok().filter(|&d| d < 10)
}

/// Writes the first `count` digits of the test split into `dir` (created) as `NNNN.txt`.
/// Returns each file name's label, read back from the files.
pub fn write_digits(dir: &Path, count: usize) -> Result<BTreeMap<String, u8>, DemoError> {
    let test = test_split()?;
    if count == 0 || count > test.len() {
        return fail(format!(
            "--digits {count}: the test split has {} digits (1..={} allowed)",
            test.len(),
            test.len()
        ));
    }
    fs::create_dir_all(dir).map_err(|e| DemoError(format!("create {}: {e}", dir.display())))?;
    let mut labels = BTreeMap::new();
    for (i, (pixels, &label)) in test.pixels.iter().zip(&test.labels).take(count).enumerate() {
        let name = format!("{i:04}.txt");
        let path = dir.join(&name);
        fs::write(&path, digit_line(pixels, label))
            .map_err(|e| DemoError(format!("write {}: {e}", path.display())))?;
        let back = fs::read_to_string(&path)
            .map_err(|e| DemoError(format!("read {}: {e}", path.display())))?;
        let Some(read) = label_of(&back) else {
            return fail(format!("{} has no label", path.display()));
        };
        debug_assert_eq!(read, label);
        labels.insert(name, read);
    }
    debug_assert_eq!(labels.len(), count);
    Ok(labels)
}

fn is_photo(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Copies the photos (PNG, JPEG) of `from` into `to` (created), `copies` times each as
/// `NN-<name>` (copy NN), sorted by name; their names.
pub fn copy_photos(from: &Path, to: &Path, copies: u16) -> Result<Vec<String>, DemoError> {
    let entries = fs::read_dir(from)
        .map_err(|e| DemoError(format!("cannot read the photos in {}: {e}", from.display())))?;
    let mut photos: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_photo(p))
        .collect();
    photos.sort();
    if photos.is_empty() {
        return fail(format!("no PNG or JPEG photos in {}", from.display()));
    }
    if photos.len() > PHOTOS_MAX {
        return fail(format!(
            "{} photos in {} (at most {PHOTOS_MAX})",
            photos.len(),
            from.display()
        ));
    }
    fs::create_dir_all(to).map_err(|e| DemoError(format!("create {}: {e}", to.display())))?;
    let mut names = Vec::new();
    for photo in photos {
        let size = fs::metadata(&photo).map(|m| m.len()).unwrap_or(u64::MAX);
        if size > PHOTO_BYTES_MAX {
            return fail(format!(
                "{} is over {PHOTO_BYTES_MAX} bytes",
                photo.display()
            ));
        }
        let Some(name) = photo
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            return fail(format!("{} has no UTF-8 name", photo.display()));
        };
        for copy in 0..copies {
            let copy_name = format!("{copy:02}-{name}");
            fs::copy(&photo, to.join(&copy_name))
                .map_err(|e| DemoError(format!("copy {}: {e}", photo.display())))?;
            names.push(copy_name);
        }
    }
    names.sort();
    debug_assert_eq!(names.len() % usize::from(copies.max(1)), 0);
    Ok(names)
}

/// The photo a copy `NN-<name>` was made from.
pub fn original_name(copy: &str) -> &str {
    match copy.split_once('-') {
        Some((n, name)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => copy,
    }
}

/// The single-process reference predictions next to the bundled photos (`image rank class_id
/// probability`, tab-separated, with a header line).
pub const REFERENCE_FILE: &str = "efficientnet-lite0.reference.tsv";
/// Largest reference file read, in bytes.
const REFERENCE_BYTES_MAX: u64 = 1024 * 1024;

/// Each photo's top class in `dir`'s [`REFERENCE_FILE`], or `None` when there is none.
pub fn read_reference(dir: &Path) -> Result<Option<BTreeMap<String, u64>>, DemoError> {
    let path = dir.join(REFERENCE_FILE);
    let Ok(meta) = fs::metadata(&path) else {
        return Ok(None);
    };
    if meta.len() > REFERENCE_BYTES_MAX {
        return fail(format!(
            "{} is over {REFERENCE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let text = fs::read_to_string(&path)
        .map_err(|e| DemoError(format!("read {}: {e}", path.display())))?;
    Ok(Some(parse_reference(&text)))
}

/// The rank-1 rows of a reference file: photo name to class id (other lines are skipped).
pub fn parse_reference(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (image, rank, class) = (fields.next()?, fields.next()?, fields.next()?);
            (rank.trim() == "1")
                .then(|| {
                    class
                        .trim()
                        .parse()
                        .ok()
                        .map(|c| (image.trim().to_owned(), c))
                })
                .flatten()
        })
        .collect()
}

/// The photos bundled with the models' tests, found from this crate's source directory.
pub fn default_photos_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("testdata")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digit_file_is_read_by_the_model_and_keeps_its_label() {
        let pixels = [3.0f32; 64];
        let line = digit_line(&pixels, 7);
        assert_eq!(label_of(&line), Some(7));
        let decoded = idunno_models::digits::decode_digit(line.as_bytes()).expect("decodes");
        assert_eq!(decoded, pixels);
        assert_eq!(label_of("1,2,x"), None);
        assert_eq!(label_of("1,2,12"), None);
    }

    #[test]
    fn the_reference_gives_each_photos_top_class() {
        let parsed = parse_reference(
            "image\trank\tclass_id\tprobability\na.png\t1\t560\t0.1\na.png\t2\t450\t0.05\nbad line\n",
        );
        assert_eq!(parsed, BTreeMap::from([("a.png".to_owned(), 560)]));
        let bundled = read_reference(&default_photos_dir())
            .expect("readable")
            .expect("bundled");
        assert_eq!(bundled.get("coffee.png"), Some(&967));
    }

    #[test]
    fn the_test_split_is_the_models_held_out_fifth() {
        let test = test_split().expect("bundled data");
        let all = Dataset::bundled().expect("bundled data");
        assert_eq!(test.len(), all.len() * 20 / 100);
    }

    #[test]
    fn writes_digits_and_copies_only_photos() {
        let dir = std::env::temp_dir().join(format!("idunno-demo-inputs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let labels = write_digits(&dir.join("digits"), 5).expect("written");
        assert_eq!(labels.len(), 5);
        assert!(labels.keys().all(|n| dir.join("digits").join(n).is_file()));
        assert!(write_digits(&dir.join("none"), 0).is_err());
        let photos = copy_photos(&default_photos_dir(), &dir.join("photos"), 2).expect("copied");
        assert!(!photos.is_empty());
        assert_eq!(photos.len() % 2, 0);
        assert!(photos.iter().all(|p| !p.ends_with(".tsv")));
        assert!(photos.contains(&"01-coffee.png".to_owned()));
        assert_eq!(original_name("01-coffee.png"), "coffee.png");
        assert_eq!(original_name("coffee-x.png"), "coffee-x.png");
        assert!(copy_photos(&dir.join("digits"), &dir.join("p2"), 1).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
