//! The watch's verdicts on certificates made here with rcgen, through a real rustls
//! handshake in memory.
