// Which peers are front proxies, read from mod_remoteip's own directives in the configuration
// tree (its configuration record is private to it): MaxClientShare then counts the forwarded
// client, never the proxy.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// Inherited by the multiplexers.
nonisolated(unsafe) var proxyTrust = ProxyTrust()

/// mod_remoteip's directives, wherever they appear (server or any vhost): a peer one section
/// trusts is trusted for every address, the conservative reading for a limit (a trusted peer
/// can only ever name another client, never evade as itself).
func readProxyTrust(startup: Bool) -> ProxyTrust {
    var headers: [String] = []
    var proxyProtocol = false
    var words: [(word: String, origin: String)] = []
    func visit(_ first: UnsafeMutablePointer<ap_directive_t>?) {
        var node = first
        while let current = node {
            let name = string(current.pointee.directive)?.lowercased() ?? ""
            let args = string(current.pointee.args) ?? ""
            let origin = "line \(current.pointee.line_num) of \(string(current.pointee.filename) ?? "?")"
            switch name {
            case "remoteipproxyprotocol":
                if args.lowercased().hasPrefix("on") { proxyProtocol = true }
            case "remoteipheader":
                if let header = args.split(separator: " ").first { headers.append(String(header)) }
            case "remoteiptrustedproxy", "remoteipinternalproxy":
                words += args.split(whereSeparator: { $0 == " " || $0 == "\t" }).map { (String($0), origin) }
            case "remoteiptrustedproxylist", "remoteipinternalproxylist":
                words += listFile(args).map { ($0, "\(args) (\(origin))") }
            default:
                break
            }
            visit(current.pointee.first_child)
            node = current.pointee.next
        }
    }
    visit(ap_conftree)
    guard let header = headers.first else { return ProxyTrust(proxyProtocol: proxyProtocol) }
    if startup && Set(headers.map { $0.lowercased() }).count > 1 {
        logStartup(PERUSER_LOG_WARNING, "RemoteIPHeader names several headers (\(headers.joined(separator: ", "))); "
                   + "MaxClientShare reads the forwarded client from \(header) only")
    }
    var ranges: [AddressRange] = []
    for (word, origin) in words {
        if let range = AddressRange(parsing: word) {
            ranges.append(range)
        } else if startup {
            logStartup(PERUSER_LOG_WARNING, "MaxClientShare cannot use \(word) at \(origin) (not an address or "
                       + "network); connections from it count as its own client")
        }
    }
    if startup && words.isEmpty {
        logStartup(PERUSER_LOG_NOTICE, "RemoteIPHeader \(header) with no RemoteIPTrustedProxy or "
                   + "RemoteIPInternalProxy: as mod_remoteip does, MaxClientShare takes every peer's \(header) "
                   + "as the client")
    }
    return ProxyTrust(header: header, proxies: ranges, proxyProtocol: proxyProtocol)
}

/// The addresses in a mod_remoteip list file (one or more per line, `#` comments).
private func listFile(_ name: String) -> [String] {
    guard let pool = configurationPool ?? ap_server_conf?.pointee.process?.pointee.pconf,
          let path = ap_server_root_relative(pool, name), let file = fopen(path, "r") else { return [] }
    defer { fclose(file) }
    var words: [String] = []
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0, let line {
        let text = String(cString: line).prefix { $0 != "#" }
        words += text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }).map(String.init)
    }
    return words
}
