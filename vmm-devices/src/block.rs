//! Block backends: where a disk or CD-ROM model gets its sectors.
