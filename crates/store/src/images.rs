//! EROFS image files, named by the fs-verity digest of their bytes, so equal
//! images are stored once.

use std::io::Write;

use strata_tree::Digest;

use crate::{Store, StoreError};

pub(crate) fn file_name(id: &Digest) -> String {
    format!("{}.erofs", id.to_hex())
}

pub(crate) fn put(store: &Store, bytes: &[u8]) -> Result<Digest, StoreError> {
    let id = Digest::of(bytes);
    let name = file_name(&id);
    let images = &store.inner.images;
    if images.exists(&name)? {
        return Ok(id);
    }
    let tmp_name = crate::tmp_names::tmp_name(crate::tmp_names::TmpKind::Image, id.to_hex());
    let tmp = &store.inner.tmp;
    tmp.unlink(&tmp_name)?;
    let mut file = tmp.create_file(&tmp_name, 0o444)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write image", tmp.path().join(&tmp_name), e))?;
    if !tmp.rename_noreplace(&tmp_name, images, &name)? {
        tmp.unlink(&tmp_name)?;
    }
    images.sync()?;
    Ok(id)
}
