// Which environment a connection belongs to, by Apache's own virtual host rules: a minimal
// connection and request (just what the vhost matching reads) built in a pool that is cleared
// for every decision.
import CApache
import CPeruserShim
import Glibc

/// The multiplexer's routing pool.
nonisolated(unsafe) var routePool: OpaquePointer?

enum VirtualHostRoute {
    case environment(Int)
    /// The vhost has no ServerEnvironment: a line for the log, naming it and the client.
    case noEnvironment(String)
    /// Not a connected TCP socket (it went away).
    case gone
}

/// What Apache's vhost rules read: the local address, the Host, and the request target when it
/// can matter (absolute-form, or any vhost with a ServerPath). The client's address does not.
struct RouteKey: Hashable {
    var local: InternetAddress
    var host: String?
    var target: String?
}

/// Answers already found in this multiplexer's generation (the vhosts are fixed for it): with
/// hundreds of vhosts Apache's matching walks every name with strcasecmp, for every connection.
/// Bounded: a client that sends endless new names only empties it.
nonisolated(unsafe) var routeCache: [RouteKey: Int] = [:]
let mostCachedRoutes = 4096
/// Whether a vhost has a ServerPath (then the path takes part in the match); set at start.
nonisolated(unsafe) var anyServerPath = false

func serverPathConfigured() -> Bool {
    var server = ap_server_conf
    while let current = server {
        if current.pointee.path != nil { return true }
        server = current.pointee.next
    }
    return false
}

/// The environment of the vhost Apache's rules give for a connection with local address `local`
/// and client `peer` (both from the kernel; nil: the connection went away), request target
/// `target` and Host `host`.
func routeByVirtualHost(local: InternetAddress?, peer: InternetAddress?, host: String?, target: String?) -> VirtualHostRoute {
    guard let local, let peer else { return .gone }
    let absolute = target.map { $0.first != "/" && $0 != "*" } ?? false
    let key = RouteKey(local: local, host: host,
                       target: absolute || anyServerPath ? target : nil)
    if let environment = routeCache[key] { return .environment(environment) }
    let route = matchVirtualHost(local: local.storage, peer: peer.storage, host: host, target: target)
    if case .environment(let environment) = route {
        if routeCache.count >= mostCachedRoutes { routeCache.removeAll(keepingCapacity: true) }
        routeCache[key] = environment
    }
    return route
}

/// Apache's own matching, on a minimal connection and request.
private func matchVirtualHost(local: sockaddr_storage, peer: sockaddr_storage, host: String?,
                              target: String?) -> VirtualHostRoute {
    guard let pool = routePool else { return .gone }
    apr_pool_clear(pool)
    guard let c = zeroed(conn_rec.self, in: pool), let r = zeroed(request_rec.self, in: pool) else { return .gone }
    c.pointee.pool = pool
    c.pointee.base_server = ap_server_conf
    c.pointee.local_addr = aprAddress(local, in: pool)
    c.pointee.client_addr = aprAddress(peer, in: pool)
    var ip: UnsafeMutablePointer<CChar>?
    apr_sockaddr_ip_get(&ip, c.pointee.client_addr)
    c.pointee.client_ip = ip
    c.pointee.notes = apr_table_make(pool, 1)
    ap_update_vhost_given_ip(c)

    r.pointee.pool = pool
    r.pointee.connection = c
    r.pointee.server = c.pointee.base_server
    r.pointee.status = HTTP_OK
    // Apache's vhost code may log about this request (at debug level: an absolute URI with a
    // Host, a bad host name), which runs every module's generate_log_id hook; those read the
    // request's tables (mod_unique_id: subprocess_env), so none of them may be NULL.
    r.pointee.headers_in = apr_table_make(pool, 1)
    r.pointee.headers_out = apr_table_make(pool, 1)
    r.pointee.err_headers_out = apr_table_make(pool, 1)
    r.pointee.subprocess_env = apr_table_make(pool, 1)
    r.pointee.notes = apr_table_make(pool, 1)
    r.pointee.per_dir_config = ap_server_conf.pointee.lookup_defaults
    r.pointee.request_config = ap_create_request_config(pool)
    r.pointee.useragent_addr = c.pointee.client_addr
    r.pointee.useragent_ip = c.pointee.client_ip
    r.pointee.uri = apr_pstrdup(pool, "/")
    if let target, target.first != "/", target != "*" {
        // absolute-form: the host in the request line wins over Host (RFC 9112 3.2.2)
        var uri = apr_uri_t()
        if apr_uri_parse(pool, target, &uri) == APR_SUCCESS {
            if let hostname = uri.hostname { r.pointee.hostname = UnsafePointer(hostname) }
            if let path = uri.path { r.pointee.uri = path }
        }
    } else if let target, target.first == "/" {
        r.pointee.uri = apr_pstrdup(pool, String(target.prefix { $0 != "?" }))
    }
    if let host { apr_table_setn(r.pointee.headers_in, "Host", apr_pstrdup(pool, host)) }
    ap_update_vhost_from_headers(r)

    let environment = peruser_shim_server_environment(r.pointee.server)
    if environment >= 0 { return .environment(Int(environment)) }
    let vhost = String(cString: peruser_shim_vhost_description(UnsafeMutableRawPointer(pool), r.pointee.server))
    return .noEnvironment("peruser: virtual host \(vhost) has no ServerEnvironment; answered 503 to "
                          + "\(ip.map { String(cString: $0) } ?? "?") (Host or TLS server name: \(host ?? "-"); "
                          + "a TLS connection is closed instead)")
}

private func zeroed<T>(_ type: T.Type, in pool: OpaquePointer) -> UnsafeMutablePointer<T>? {
    guard let memory = apr_palloc(pool, MemoryLayout<T>.size) else { return nil }
    memset(memory, 0, MemoryLayout<T>.size)
    return memory.bindMemory(to: T.self, capacity: 1)
}

/// An apr_sockaddr_t for a kernel address, filled as apr fills its own.
private func aprAddress(_ storage: sockaddr_storage, in pool: OpaquePointer) -> UnsafeMutablePointer<apr_sockaddr_t>? {
    guard let sa = zeroed(apr_sockaddr_t.self, in: pool),
          let union = MemoryLayout<apr_sockaddr_t>.offset(of: \apr_sockaddr_t.sa) else { return nil }
    let base = UnsafeMutableRawPointer(sa) + union
    let v6 = Int32(storage.ss_family) == AF_INET6
    let size = v6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
    withUnsafeBytes(of: storage) { base.copyMemory(from: $0.baseAddress!, byteCount: size) }
    sa.pointee.pool = pool
    sa.pointee.family = Int32(storage.ss_family)
    sa.pointee.salen = socklen_t(size)
    if v6 {
        sa.pointee.port = UInt16(bigEndian: base.load(as: sockaddr_in6.self).sin6_port)
        sa.pointee.addr_str_len = 46  // INET6_ADDRSTRLEN
        sa.pointee.ipaddr_ptr = base + MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!
        sa.pointee.ipaddr_len = Int32(MemoryLayout<in6_addr>.size)
    } else {
        sa.pointee.port = UInt16(bigEndian: base.load(as: sockaddr_in.self).sin_port)
        sa.pointee.addr_str_len = 16  // INET_ADDRSTRLEN
        sa.pointee.ipaddr_ptr = base + MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!
        sa.pointee.ipaddr_len = Int32(MemoryLayout<in_addr>.size)
    }
    return sa
}
