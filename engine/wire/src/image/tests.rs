use std::fs::{self, File};
use std::path::{Path, PathBuf};

use pagehop_mem::pages::Range;

use super::*;
use serde_json::{Value, json};

const PS: u64 = 4096;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pagehop-image-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn page(byte: u8) -> Vec<u8> {
    vec![byte; PS as usize]
}

/// Received pages over mappings, as a destination's store holds them.
struct Store {
    ranges: Vec<Range>,
    pages: std::collections::BTreeMap<u64, Option<Vec<u8>>>,
}

impl Store {
    fn new() -> Self {
        Self {
            ranges: Vec::new(),
            pages: Default::default(),
        }
    }

    fn set_layout(&mut self, ranges: &[Range]) -> Result<(), ()> {
        self.ranges = ranges.to_vec();
        Ok(())
    }

    fn put(&mut self, addr: u64, page: Option<&[u8]>) -> Result<(), ()> {
        self.pages.insert(addr, page.map(<[u8]>::to_vec));
        Ok(())
    }

    fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        self.ranges.iter().copied()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
        self.pages.iter().map(|(&a, p)| (a, p.as_deref()))
    }

    fn get(&self, addr: u64) -> PageState<'_> {
        match self.pages.get(&addr) {
            None => PageState::Absent,
            Some(None) => PageState::Zero,
            Some(Some(d)) => PageState::Data(d),
        }
    }

    fn write(&self, dir: &Path) -> Result<u64, ImageError> {
        write(dir, PS as usize, self.ranges(), self.iter())
    }
}

/// A store over three ranges, two of them adjacent, with data, zero and
/// absent pages.
fn sample_store() -> Store {
    let mut store = Store::new();
    let a = Range::new(0x10_0000, 0x10_0000 + 8 * PS);
    let b = Range::new(a.end, a.end + 4 * PS); // adjacent to a
    let c = Range::new(0x7f00_0000_0000, 0x7f00_0000_0000 + 16 * PS);
    store.set_layout(&[a, b, c]).expect("layout");
    for (i, byte) in [(0u64, 1u8), (1, 2), (2, 3), (7, 4), (8, 5), (9, 6)] {
        store.put(a.start + i * PS, Some(&page(byte))).expect("put");
    }
    store.put(a.start + 3 * PS, None).expect("zero");
    store.put(a.start + 4 * PS, None).expect("zero");
    store.put(b.start + 3 * PS, None).expect("zero");
    store.put(c.start + 15 * PS, Some(&page(9))).expect("put");
    store
}

fn written(tag: &str) -> (TempDir, Store) {
    let dir = TempDir::new(tag);
    let store = sample_store();
    assert_eq!(store.write(&dir.0).expect("write"), 10);
    (dir, store)
}

fn files(dir: &TempDir) -> (Vec<u8>, Vec<u8>) {
    (
        fs::read(dir.0.join("image.json")).expect("json"),
        fs::read(dir.0.join("pages.bin")).expect("pages"),
    )
}

#[test]
fn round_trips_with_the_writer() {
    let (dir, store) = written("round-trip");
    let image = read(&dir.0).expect("read");
    assert_eq!(image.page_size(), PS as usize);
    assert_eq!(
        image.ranges(),
        store.ranges().collect::<Vec<_>>().as_slice()
    );
    let got: Vec<(u64, Option<Vec<u8>>)> = image
        .iter()
        .map(|(a, p)| (a, p.map(<[u8]>::to_vec)))
        .collect();
    let want: Vec<(u64, Option<Vec<u8>>)> = store
        .iter()
        .map(|(a, p)| (a, p.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(image.counts(), (7, 3));
    // Pages 7-9 of a and b's first page... the data run crosses from a
    // into b, which the writer merges into one run.
    assert!(
        image
            .runs()
            .iter()
            .any(|r| r.addr == 0x10_0000 + 7 * PS && r.pages == 3)
    );
    for r in store.ranges() {
        for addr in (r.start..r.end).step_by(PS as usize) {
            assert_eq!(image.get(addr), store.get(addr), "{addr:#x}");
            assert_eq!(image.get(addr + 17), store.get(addr), "{addr:#x}+17");
        }
    }
    assert_eq!(image.get(0), PageState::Absent);
    assert_eq!(image.get(u64::MAX), PageState::Absent);
    // parse() sees the same thing from bytes.
    let (json, pages) = files(&dir);
    let parsed = parse(&json, pages).expect("parse");
    assert_eq!(parsed.runs(), image.runs());
}

#[test]
fn empty_store_round_trips() {
    let dir = TempDir::new("empty");
    assert_eq!(Store::new().write(&dir.0).expect("write"), 0);
    let image = read(&dir.0).expect("read");
    assert!(image.ranges().is_empty() && image.runs().is_empty());
    assert_eq!(image.iter().count(), 0);
}

#[test]
fn missing_files_are_named() {
    let (dir, _) = written("missing");
    fs::remove_file(dir.0.join("pages.bin")).expect("rm");
    let err = read(&dir.0).expect_err("no pages.bin");
    assert!(matches!(&err, ImageError::Missing { path } if path.ends_with("pages.bin")));
    fs::remove_file(dir.0.join("image.json")).expect("rm");
    let err = read(&dir.0).expect_err("no image.json");
    assert!(matches!(&err, ImageError::Missing { path } if path.ends_with("image.json")));
    assert!(err.to_string().contains("incomplete"), "{err}");
}

#[test]
fn pages_bin_of_the_wrong_size_is_refused() {
    let (dir, _) = written("pages-len");
    let pages_path = dir.0.join("pages.bin");
    let full = fs::read(&pages_path).expect("pages");
    for len in [0, full.len() - 1, full.len() - PS as usize, full.len() + 1] {
        let mut bytes = full.clone();
        bytes.resize(len, 0);
        fs::write(&pages_path, &bytes).expect("write");
        match read(&dir.0) {
            Err(ImageError::PagesLen { len: l, expected }) => {
                assert_eq!((l, expected), (len as u64, full.len() as u64));
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
}

#[test]
fn oversized_manifest_is_refused_before_reading() {
    let dir = TempDir::new("big");
    fs::create_dir_all(&dir.0).expect("mkdir");
    // Sparse: costs no disk space, and is never read.
    let f = File::create(dir.0.join("image.json")).expect("create");
    f.set_len(MAX_MANIFEST_LEN + 1).expect("set_len");
    let err = read(&dir.0).expect_err("too large");
    assert!(matches!(err, ImageError::ManifestTooLarge { .. }), "{err}");
}

#[test]
fn truncated_manifests_are_refused() {
    let (dir, _) = written("truncated");
    let (json, pages) = files(&dir);
    for cut in 0..json.len() {
        // Cutting trailing whitespace leaves a valid document.
        if json[cut..].iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(&json[..cut], pages.clone()) {
            Err(ImageError::Json { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

/// The sample image's manifest as a JSON value, and its pages.
fn sample() -> (Value, Vec<u8>) {
    let (dir, _) = written("sample");
    let (json, pages) = files(&dir);
    (serde_json::from_slice(&json).expect("json"), pages)
}

fn parse_value(v: &Value, pages: &[u8]) -> Result<Image, ImageError> {
    parse(&serde_json::to_vec(v).expect("serialize"), pages.to_vec())
}

#[test]
fn corrupted_manifests_are_refused_with_clear_errors() {
    let (good, pages) = sample();
    parse_value(&good, &pages).expect("sample is valid");
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        ("format", |v| v["format"] = json!("criu"), "format \"criu\""),
        ("version", |v| v["version"] = json!(2), "version 2"),
        ("version type", |v| v["version"] = json!("1"), "not a valid"),
        (
            "page size",
            |v| v["page_size"] = json!(4095),
            "page size 4095",
        ),
        ("page size 0", |v| v["page_size"] = json!(0), "page size 0"),
        (
            "page size big",
            |v| v["page_size"] = json!(1u64 << 31),
            "page size",
        ),
        ("negative", |v| v["page_size"] = json!(-4096), "not a valid"),
        ("unknown field", |v| v["extra"] = json!(1), "unknown field"),
        (
            "no runs",
            |v| drop(v.as_object_mut().unwrap().remove("runs")),
            "missing field",
        ),
        (
            "0x",
            |v| v["ranges"][0]["start"] = json!("0x100000"),
            "ranges[0].start",
        ),
        (
            "upper",
            |v| v["ranges"][0]["start"] = json!("10000A"),
            "ranges[0].start",
        ),
        (
            "sign",
            |v| v["ranges"][0]["end"] = json!("+108000"),
            "ranges[0].end",
        ),
        (
            "empty",
            |v| v["runs"][0]["addr"] = json!(""),
            "runs[0].addr",
        ),
        (
            "long",
            |v| v["runs"][0]["addr"] = json!("00000000000100000"),
            "runs[0].addr",
        ),
        (
            "2^56",
            |v| v["ranges"][2]["end"] = json!("100000000000000"),
            "ranges[2].end",
        ),
        (
            "inverted",
            |v| v["ranges"][0]["end"] = json!("f0000"),
            "range 0",
        ),
        (
            "unaligned",
            |v| v["ranges"][1]["end"] = json!("10c001"),
            "not page-aligned",
        ),
        (
            "overlap",
            |v| v["ranges"][1]["start"] = json!("107000"),
            "overlaps",
        ),
        (
            "zero pages",
            |v| v["runs"][1]["pages"] = json!(0),
            "no pages",
        ),
        (
            "run unaligned",
            |v| v["runs"][1]["addr"] = json!("103800"),
            "not page-aligned",
        ),
        (
            "run order",
            |v| v["runs"][1]["addr"] = json!("100000"),
            "overlaps or precedes",
        ),
        (
            "outside",
            |v| v["runs"][3]["addr"] = json!("10c000"),
            "not inside",
        ),
        (
            "overflow",
            |v| v["runs"][1]["pages"] = json!(u64::MAX),
            "past 2^56",
        ),
        (
            "no offset",
            |v| drop(v["runs"][0].as_object_mut().unwrap().remove("offset")),
            "needs an offset",
        ),
        (
            "zero offset",
            |v| v["runs"][1]["offset"] = json!(12288),
            "no offset",
        ),
        (
            "offset",
            |v| v["runs"][2]["offset"] = json!(4096),
            "offset 4096 is not 12288",
        ),
        (
            "kind",
            |v| v["runs"][0]["kind"] = json!("hole"),
            "unknown variant",
        ),
    ];
    for (what, edit, needle) in cases {
        let mut v = good.clone();
        edit(&mut v);
        let err = match parse_value(&v, &pages) {
            Err(e) => e,
            Ok(_) => panic!("{what}: accepted {v}"),
        };
        let msg = pagehop_mem::error_chain(&err);
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn an_image_is_a_page_provider() {
    use pagehop_mem::{PageProvider, SpaceKey};
    let (dir, store) = written("provider");
    let image = read(&dir.0).expect("read");
    let layout = image.layout(SpaceKey::ROOT).expect("layout");
    let ranges: Vec<Range> = layout.vmas.iter().map(|v| v.range).collect();
    assert_eq!(ranges, store.ranges().collect::<Vec<_>>());
    let populated = image.populated(SpaceKey::ROOT, &layout).expect("populated");
    assert_eq!(populated.pages(PS), 10);
    // Every page of every range, absent ones included, in one read.
    let runs: Vec<(u64, usize)> = store
        .ranges()
        .map(|r| (r.start, (r.len() / PS) as usize))
        .collect();
    let total: usize = runs.iter().map(|r| r.1).sum();
    let mut buf = vec![0xaau8; total * PS as usize];
    let mut present = Vec::new();
    image
        .read(SpaceKey::ROOT, &runs, &mut buf, &mut present)
        .expect("read pages");
    assert_eq!(present.len(), total);
    let mut i = 0;
    for r in store.ranges() {
        for addr in (r.start..r.end).step_by(PS as usize) {
            let got = &buf[i * PS as usize..(i + 1) * PS as usize];
            match store.get(addr) {
                PageState::Absent => assert!(!present[i], "{addr:#x} absent"),
                PageState::Zero => assert!(present[i] && got.iter().all(|&b| b == 0)),
                PageState::Data(d) => assert!(present[i] && got == d, "{addr:#x}"),
            }
            i += 1;
        }
    }
    assert!(matches!(
        image.layout(SpaceKey(7)),
        Err(pagehop_mem::ProvideError::UnknownSpace { .. })
    ));
    let mut small = vec![0u8; 1];
    assert!(matches!(
        image.read(SpaceKey::ROOT, &runs, &mut small, &mut present),
        Err(pagehop_mem::ProvideError::BadRead { .. })
    ));
}

#[test]
fn the_writer_refuses_pages_out_of_order() {
    use pagehop_mem::{PageSink, SpaceKey};
    let dir = TempDir::new("order");
    let mut writer = ImageWriter::create(&dir.0, PS as usize).expect("create");
    let p = page(1);
    writer
        .put(SpaceKey::ROOT, &[(0x10_0000, Some(&p)), (0x10_2000, None)])
        .expect("ascending");
    let err = writer
        .put(SpaceKey::ROOT, &[(0x10_1000, Some(&p))])
        .expect_err("backwards");
    assert!(
        matches!(
            err,
            ImageError::OutOfOrder {
                addr: 0x10_1000,
                after: 0x10_2000
            }
        ),
        "{err}"
    );
    assert!(
        !dir.0.join("image.json").exists(),
        "no manifest before finish"
    );
    assert_eq!(writer.finish().expect("finish"), 2);
    assert!(dir.0.join("image.json").exists());
    assert!(matches!(writer.finish(), Err(ImageError::Finished)));
}

/// The writer runs as root in a directory others may reach: it never writes
/// through a planted symlink, keeps the memory private, and never leaves an
/// old `image.json` beside new pages.
#[test]
fn the_writer_unlinks_planted_files_and_keeps_the_memory_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("planted");
    fs::create_dir_all(&dir.0).expect("dir");
    let victim = dir.0.join("victim");
    fs::write(&victim, b"precious").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.0.join("pages.bin")).expect("symlink");
    fs::write(dir.0.join("image.json"), b"{}").expect("an old manifest");
    let mut writer = ImageWriter::create(&dir.0, PS as usize).expect("create");
    assert!(
        !dir.0.join("image.json").exists(),
        "an old image.json survived the start of a new image"
    );
    let p = page(7);
    let root = pagehop_mem::SpaceKey::ROOT;
    pagehop_mem::PageSink::set_layout(&mut writer, root, &[Range::new(0x10_0000, 0x10_1000)])
        .expect("layout");
    pagehop_mem::PageSink::put(&mut writer, root, &[(0x10_0000, Some(&p))]).expect("put");
    pagehop_mem::PageSink::finish(&mut writer).expect("finish");
    assert_eq!(fs::read(&victim).expect("victim"), b"precious");
    for name in ["pages.bin", "image.json"] {
        let meta = fs::symlink_metadata(dir.0.join(name)).expect(name);
        assert!(meta.file_type().is_file(), "{name} is not a plain file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    assert!(!dir.0.join("image.json.tmp").exists());
    read(&dir.0).expect("the new image reads back");
}
