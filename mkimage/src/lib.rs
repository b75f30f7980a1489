//! mkimage: builds, inspects and verifies encrypted cinfer model images.
