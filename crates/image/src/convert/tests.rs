//! Layers converted in memory and read back through the TOC reader, file
//! by file; whole images from one OCI layout to another.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;

use super::*;
use crate::source::LayoutSource;
use crate::toc::{decompress_chunk, EntryKind, Toc, TocFormat};

/// A layer of every kind of entry: files empty, small and spanning
/// several chunks, a hard link, a symlink, a fifo, xattrs, a whiteout, a
/// long name, and GNU tar's padding to a 10 KiB record at the end.
fn sample_tar() -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut files = BTreeMap::new();
    let mut add = |builder: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(1_704_067_200);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data).unwrap();
        if kind == tar::EntryType::Regular {
            files.insert(name.trim_start_matches("./").to_owned(), data.to_vec());
        }
    };
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
    add(&mut builder, tar::EntryType::Directory, "./", b"");
    add(&mut builder, tar::EntryType::Directory, "./etc/", b"");
    add(&mut builder, tar::EntryType::Regular, "./etc/hostname", b"strata\n");
    add(&mut builder, tar::EntryType::Regular, "./etc/empty", b"");
    builder
        .append_pax_extensions([("SCHILY.xattr.user.note", &b"hi"[..])])
        .unwrap();
    add(&mut builder, tar::EntryType::Regular, "./etc/noted", b"with an xattr");
    add(&mut builder, tar::EntryType::Regular, "./usr/lib/big.bin", &big);
    add(
        &mut builder,
        tar::EntryType::Regular,
        &format!("./usr/{}/long.txt", "n".repeat(120)),
        b"long name",
    );
    add(&mut builder, tar::EntryType::Regular, "./usr/.wh.gone", b"");
    add(&mut builder, tar::EntryType::Fifo, "./run/fifo", b"");
    for (kind, name, target) in [
        (tar::EntryType::Link, "./usr/lib/big.link", "./usr/lib/big.bin"),
        (tar::EntryType::Symlink, "./usr/lib/libx.so", "big.bin"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        builder.append_link(&mut header, name, target).unwrap();
    }
    let mut tar = builder.into_inner().unwrap();
    tar.resize(tar.len().div_ceil(10240) * 10240, 0);
    (tar, files)
}

struct Converted {
    blob: Vec<u8>,
    annotations: BTreeMap<String, String>,
    diff_id: Sha256Digest,
}

fn convert_tar(format: Format, tar: &[u8], chunk_size: u64) -> Converted {
    let options = ConvertOptions {
        format,
        chunk_size,
        level: None,
        limits: Limits::default(),
        parallel_layers: 1,
        platform: Platform::host(),
    };
    let file = tempfile::tempfile().unwrap();
    let limits = TocLimits::default();
    let mut writer = new_writer(
        &options,
        "layer",
        BlobWriter::new(file),
        format.default_level(),
        &limits,
    )
    .unwrap();
    walk::walk(&mut &tar[..], "layer", &options.limits, &mut *writer).unwrap();
    let written = writer.finish().unwrap();
    let (mut file, digest, size) = written.out.finish().unwrap();
    read_back(format, "layer", &file, size, &written.annotations, &limits).unwrap();
    let mut blob = Vec::new();
    std::io::Seek::rewind(&mut file).unwrap();
    file.read_to_end(&mut blob).unwrap();
    assert_eq!(Sha256Digest::of(&blob), digest);
    Converted {
        blob,
        annotations: written.annotations,
        diff_id: written.diff_id,
    }
}

fn read_toc(format: Format, converted: &Converted) -> Toc {
    let limits = TocLimits::default();
    let size = converted.blob.len() as u64;
    match format {
        Format::Estargz => {
            let digest = toc::estargz::toc_digest(&converted.annotations).unwrap();
            toc::estargz::read_toc(&converted.blob, size, &digest, &limits).unwrap()
        }
        _ => {
            let found = toc::zstd_chunked::annotations(&converted.annotations).unwrap().unwrap();
            toc::zstd_chunked::read_toc(&converted.blob, size, &found, &limits)
                .unwrap()
                .toc
        }
    }
}

/// Every regular file's bytes, read through its chunks' compressed ranges.
fn files_through_toc(toc: &Toc, blob: &[u8]) -> BTreeMap<String, Vec<u8>> {
    toc.files()
        .map(|(entry, content)| {
            let mut data = Vec::new();
            for chunk in &content.chunks {
                let start = usize::try_from(chunk.compressed.start).unwrap();
                let end = usize::try_from(chunk.compressed.end).unwrap();
                data.extend(decompress_chunk(toc.format, &blob[start..end], chunk).unwrap());
            }
            assert_eq!(Sha256Digest::of(&data), content.digest, "{}", entry.path);
            (entry.path.clone(), data)
        })
        .collect()
}

#[test]
fn zstd_chunked_keeps_every_byte_and_indexes_every_file() {
    let (tar, files) = sample_tar();
    for chunk_size in [4 << 20, 65_536, 1000] {
        let converted = convert_tar(Format::ZstdChunked, &tar, chunk_size);
        assert_eq!(zstd::decode_all(&converted.blob[..]).unwrap(), tar);
        assert_eq!(converted.diff_id, Sha256Digest::of(&tar));
        let toc = read_toc(Format::ZstdChunked, &converted);
        assert_eq!(toc.format, TocFormat::ZstdChunked);
        assert_eq!(files_through_toc(&toc, &converted.blob), files);
        let big = toc.files().find(|(e, _)| e.path == "usr/lib/big.bin").unwrap().1;
        assert_eq!(big.chunks.len() as u64, 1_200_000u64.div_ceil(chunk_size));
        let kinds: Vec<_> = toc.entries.iter().map(|e| (e.path.as_str(), &e.kind)).collect();
        assert!(kinds.contains(&("run/fifo", &EntryKind::Fifo)));
        assert!(kinds.contains(&(
            "usr/lib/big.link",
            &EntryKind::Hardlink {
                target: "usr/lib/big.bin".into()
            }
        )));
        let noted = toc.entries.iter().find(|e| e.path == "etc/noted").unwrap();
        assert_eq!(noted.xattrs[&b"user.note"[..]], b"hi");
        assert_eq!(noted.mtime_sec, 1_704_067_200);
    }
}

#[test]
fn zstd_chunked_tar_split_rebuilds_the_tar() {
    let (tar, files) = sample_tar();
    let converted = convert_tar(Format::ZstdChunked, &tar, 1000);
    let found = toc::zstd_chunked::annotations(&converted.annotations).unwrap().unwrap();
    let limits = TocLimits::default();
    let size = converted.blob.len() as u64;
    let read = toc::zstd_chunked::read_toc(&converted.blob, size, &found, &limits).unwrap();
    let split = toc::zstd_chunked::read_tar_split(&converted.blob, size, &read.tar_split.unwrap(), &limits).unwrap();
    // tar-split's assembly: segments as they are, each file's data in its place.
    let mut rebuilt = Vec::new();
    for line in split.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let record: serde_json::Value = serde_json::from_slice(line).unwrap();
        let payload = record["payload"].as_str().map(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(p).unwrap()
        });
        match record["type"].as_u64() {
            Some(2) => rebuilt.extend(payload.unwrap()),
            Some(1) => {
                let name = record["name"].as_str().unwrap().trim_start_matches("./");
                let size = record["size"].as_u64().unwrap_or(0);
                if size > 0 {
                    let data = &files[name];
                    let mut crc = tar_split::Crc64::new();
                    crc.update(data);
                    assert_eq!(payload.unwrap(), crc.sum().to_be_bytes());
                    rebuilt.extend(data);
                }
            }
            other => panic!("record type {other:?}"),
        }
    }
    assert_eq!(rebuilt, tar);
}

#[test]
fn estargz_adds_only_its_toc_entry() {
    let (tar, files) = sample_tar();
    for chunk_size in [4 << 20, 65_536] {
        let converted = convert_tar(Format::Estargz, &tar, chunk_size);
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&converted.blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(converted.diff_id, Sha256Digest::of(&plain));
        // The original entries, byte for byte, then stargz.index.json.
        let mut archive = tar::Archive::new(&tar[..]);
        let mut original_end = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            original_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        }
        let original_end = usize::try_from(original_end).unwrap();
        assert_eq!(plain[..original_end], tar[..original_end]);
        let mut names = Vec::new();
        for entry in tar::Archive::new(&plain[..]).entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names.last().map(String::as_str), Some("stargz.index.json"));
        let toc = read_toc(Format::Estargz, &converted);
        assert_eq!(files_through_toc(&toc, &converted.blob), files);
        let size = &converted.annotations[estargz::UNCOMPRESSED_SIZE_ANNOTATION];
        assert_eq!(size, &plain.len().to_string());

        // Converting the result again drops the old TOC entry.
        let again = convert_tar(Format::Estargz, &plain, chunk_size);
        let mut plain_again = Vec::new();
        flate2::read::MultiGzDecoder::new(&again.blob[..])
            .read_to_end(&mut plain_again)
            .unwrap();
        assert_eq!(plain_again, plain);
        assert_eq!(again.blob, converted.blob, "conversion is deterministic");
    }
}

#[test]
fn plain_formats_keep_the_tar() {
    let (tar, _) = sample_tar();
    let gzip = convert_tar(Format::Gzip, &tar, 0);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gzip.blob[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, tar);
    let zstd = convert_tar(Format::Zstd, &tar, 0);
    assert_eq!(zstd::decode_all(&zstd.blob[..]).unwrap(), tar);
    assert!(gzip.annotations.is_empty() && zstd.annotations.is_empty());
}

#[test]
fn what_a_toc_cannot_hold_is_refused() {
    let mut builder = tar::Builder::new(Vec::new());
    for _ in 0..2 {
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        builder.append_data(&mut header, "twice", &b"x"[..]).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let options = ConvertOptions {
        format: Format::ZstdChunked,
        chunk_size: 1 << 20,
        level: None,
        limits: Limits::default(),
        parallel_layers: 1,
        platform: Platform::host(),
    };
    let limits = TocLimits::default();
    let out = BlobWriter::new(tempfile::tempfile().unwrap());
    let mut writer = new_writer(&options, "layer", out, 3, &limits).unwrap();
    let e = walk::walk(&mut &tar[..], "layer", &options.limits, &mut *writer).unwrap_err();
    assert!(e.to_string().contains("named twice"), "{e}");
    // eStargz keeps tar's rule: the later entry wins.
    convert_tar(Format::Estargz, &tar, 1 << 20);
}

/// An OCI layout holding one image of `layers` (uncompressed tars).
fn layout_with(dir: &std::path::Path, layers: &[Vec<u8>]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let blob = |bytes: &[u8]| {
        let digest = sha256_digest(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
        (digest, bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let (digest, size) = blob(tar);
        descs.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}),
        );
        diff_ids.push(digest);
    }
    let host = Platform::host();
    let config = serde_json::json!({"architecture": host.architecture, "os": host.os,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": crate::manifest::OCI_MANIFEST,
        "config": {"mediaType": image::OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descs, "annotations": {"org.example": "kept"}});
    let (digest, size) = blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": crate::manifest::OCI_MANIFEST,
        "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": "src"}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn whole_images_convert_between_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, files) = sample_tar();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(3);
    builder.append_data(&mut header, "top.txt", &b"top"[..]).unwrap();
    let small = builder.into_inner().unwrap();
    layout_with(&dir.path().join("src"), &[tar, small]);
    let source = LayoutSource::new(&dir.path().join("src"), Some("src"));
    for format in [Format::ZstdChunked, Format::Estargz] {
        let out = dir.path().join(format.name().replace(':', "-"));
        let destination = LayoutDestination::create(&out, "converted").unwrap();
        let options = ConvertOptions {
            format,
            chunk_size: 65_536,
            level: None,
            limits: Limits::default(),
            parallel_layers: 2,
            platform: Platform::host(),
        };
        let progress = Arc::new(Progress::default());
        let report = convert(&source, &destination, &options, &progress).unwrap();
        assert_eq!(report.layers.len(), 2);
        assert_eq!(report.config_changed, format == Format::Estargz);
        assert!(report.tar_bytes() > 1_200_000);

        // The result resolves as any image does, and its TOCs read back.
        let converted = LayoutSource::new(&out, Some("converted"));
        let resolved = resolve(&converted, &Platform::host()).unwrap();
        assert_eq!(resolved.manifest_digest, report.manifest_digest);
        let layer = &resolved.manifest.layers[0];
        assert_eq!(layer.media_type, format.media_type());
        let blob = converted.blob_bytes(layer).unwrap();
        let again = Converted {
            blob,
            annotations: layer.annotations.clone(),
            diff_id: Sha256Digest::parse(&resolved.config.diff_ids[0]).unwrap(),
        };
        let toc = read_toc(format, &again);
        assert_eq!(files_through_toc(&toc, &again.blob), files);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("blobs/sha256").join(&report.manifest_digest[7..])).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["annotations"]["org.example"], "kept");

        // A second run gives the same image; the index names it once.
        let report2 = convert(&source, &destination, &options, &progress).unwrap();
        assert_eq!(report2.manifest_digest, report.manifest_digest);
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn zstd_chunked_keeps_access_and_change_times() {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("atime", &b"1700000000.5"[..]), ("ctime", &b"1700000001"[..])])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_size(1);
    header.set_mtime(1_700_000_002);
    builder.append_data(&mut header, "f", &b"x"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let converted = convert_tar(Format::ZstdChunked, &tar, 1 << 20);
    let position = &converted.annotations[toc::zstd_chunked::MANIFEST_POSITION];
    let fields: Vec<usize> = position.split(':').map(|n| n.parse().unwrap()).collect();
    let frame = &converted.blob[fields[0]..fields[0] + fields[1]];
    let json: serde_json::Value = serde_json::from_slice(&zstd::decode_all(frame).unwrap()).unwrap();
    let entry = &json["entries"][0];
    assert_eq!(entry["modtime"], "2023-11-14T22:13:22Z");
    assert_eq!(entry["accesstime"], "2023-11-14T22:13:20.5Z");
    assert_eq!(entry["changetime"], "2023-11-14T22:13:21Z");
}

/// A contiguous file (typeflag `7`) is a regular file to the import and to
/// the TOC: a whole read of its converted layer hashes it, finds the tar
/// agreeing with the TOC, and indexes it.
#[test]
fn a_contiguous_file_is_hashed_and_indexed_on_a_whole_read() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Continuous);
    header.set_mode(0o644);
    header.set_mtime(1_704_067_200);
    header.set_size(data.len() as u64);
    builder.append_data(&mut header, "contiguous.bin", &data[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    for format in [Format::Estargz, Format::ZstdChunked] {
        let (_dir, store, import) = import_whole(format, &tar);
        assert!(import.is_ok(), "{}: {:?}", format.name(), import.err());
        // The row (the object itself is published with the image).
        assert_eq!(store.sha256_index_len().unwrap(), 1, "{}", format.name());
    }
}

/// `tar` converted to `format` and read whole into a new store, as a pull
/// with no partial attempt does.
fn import_whole(
    format: Format,
    tar: &[u8],
) -> (
    tempfile::TempDir,
    strata_store::Store,
    Result<crate::LayerImport, crate::ImportError>,
) {
    let converted = convert_tar(format, tar, 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let store = strata_store::Store::open(dir.path()).unwrap();
    let desc = Descriptor {
        media_type: format.media_type().into(),
        digest: Sha256Digest::of(&converted.blob).to_string(),
        size: converted.blob.len() as u64,
        platform: None,
        annotations: converted.annotations.clone(),
    };
    let import = crate::layer::import_layer(
        &store,
        &desc,
        Some(&converted.diff_id.to_string()),
        Box::new(std::io::Cursor::new(converted.blob)),
        &Limits::default(),
        &Arc::new(Progress::default()),
    );
    (dir, store, import)
}

/// A whole read of a converted layer indexes every file by the SHA-256 of
/// its bytes, however its content was stored: inline, a new object held in
/// memory, one streamed, and repeats of both (known by then, so hashed as
/// read or read back).
#[test]
fn a_whole_read_indexes_every_content_however_it_was_stored() {
    let mid: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let large: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    let files: [(&str, &[u8]); 5] = [
        ("small", b"a small file, inline"),
        ("mid", &mid),
        ("mid-again", &mid),
        ("large", &large),
        ("large-again", &large),
    ];
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(1_704_067_200);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    for format in [Format::Estargz, Format::ZstdChunked] {
        let (_dir, store, import) = import_whole(format, &tar);
        let import = import.unwrap_or_else(|e| panic!("{}: {e}", format.name()));
        import.stager.publish().unwrap();
        for (name, data) in [files[1], files[3]] {
            let found = store.objects_by_sha256(&[Sha256Digest::of(data).0]).unwrap();
            let object = found[0].unwrap_or_else(|| panic!("{}: {name} is not indexed", format.name()));
            assert_eq!(
                object.digest,
                strata_tree::Digest::of(data),
                "{}: {name}",
                format.name()
            );
            assert_eq!(object.size, data.len() as u64);
        }
        assert_eq!(store.sha256_index_len().unwrap(), 2, "{}", format.name());
    }
}
