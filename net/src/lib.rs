//! nocturne-net: transports and the HTTP/1.1 layer.
