//! The PIIX IDE controller with ATA disks and ATAPI CD-ROMs.
