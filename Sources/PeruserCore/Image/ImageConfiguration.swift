// The configuration a process image reads: the root parent's configuration tree as Apache read
// it (Includes, <IfModule>, <IfDefine>, <Macro> and ${variables} already expanded), written back
// as text, with every virtual host that is not the image's own cut down to what routing needs.
//
// An image of environment E (Images.swift) loads E's vhosts whole and every other vhost as a
// stub: its addresses, names, ServerPath and environment, so Apache in E's workers matches a
// request to the same vhost the multiplexers did and hands back what is not E's. A stub carries
// nothing else: no key, no secret, no log. The multiplexers' image has only stubs and no SSL*
// directive at all, so mod_ssl loads no key there.

/// One directive of Apache's configuration tree.
public struct ConfigurationNode: Equatable {
    public var directive: String
    /// As Apache keeps them: the rest of the line, variables expanded; a section's ends in `>`.
    public var arguments: String
    public var children: [ConfigurationNode]
    /// For a `<VirtualHost>`: the environment that serves it (nil: none, answered 503).
    public var environment: Int?
    /// The loaded module that owns the directive, by its LoadModule symbol (nil: core, or a
    /// module linked into httpd).
    public var module: String?

    public init(_ directive: String, _ arguments: String = "", children: [ConfigurationNode] = [],
                environment: Int? = nil, module: String? = nil) {
        self.directive = directive
        self.arguments = arguments
        self.children = children
        self.environment = environment
        self.module = module
    }

    var isSection: Bool { directive.hasPrefix("<") }
    var isVirtualHost: Bool { directive.lowercased() == "<virtualhost" }
}

/// Which process image a configuration is written for.
public enum ImageRole: Equatable, CustomStringConvertible {
    /// Workers of one environment (its index).
    case environment(Int)
    /// Multiplexers: routing only.
    case multiplexers

    public var description: String {
        switch self {
        case .environment(let index): return "environment \(index)"
        case .multiplexers: return "multiplexers"
        }
    }
}

public enum ImageConfiguration {
    /// Modules the multiplexers never use (they route, and serve no request): language
    /// runtimes. Their image loads none of them, nor any directive they own. mod_php alone is
    /// about 9 MiB of the image (its opcache segment, its relocations, libxml2's and ICU's),
    /// shared by every multiplexer, and part of its start. Only runtimes that register nothing
    /// other modules' directives name when they are read: mod_ssl stays though unused there (a
    /// `LogFormat` with `%{SSL_PROTOCOL}x`, `Require ssl` would fail without it), and so does
    /// mod_perl (it can register `Require` providers).
    public static let modulesMultiplexersLeaveOut = phpModules.union(["python_module", "wsgi_module"])

    /// mod_php's LoadModule symbols, across PHP versions.
    static let phpModules: Set<String> = ["php_module", "php5_module", "php7_module", "php8_module"]

    /// Modules whose post_config the root parent does not run when every environment's workers
    /// come from images: their engine started there serves nothing (no worker is forked from
    /// the root, and each image starts its own). For mod_php that start was 13 MiB of the root's
    /// memory with 300 tenants, shared with no other process: opcache's segment, php.ini's
    /// extensions, the function tables, libcrypto's pages. PHP only: its post_config starts its
    /// engine and nothing else, while mod_wsgi's starts its daemon processes and mod_python's
    /// interpreters a worker inherits.
    public static let enginesTheRootLeavesUnstarted = phpModules

    /// What a stub keeps of a vhost: what Apache's vhost matching and this MPM's routing read.
    static let routingDirectives: Set<String> = ["servername", "serveralias", "serverpath", "serverenvironment",
                                                 "assignuserid"]

    /// The text of the configuration for `role`. `preamble` comes first (LoadModule lines and
    /// what Apache executed while reading, which the tree no longer holds). `sslLoaded`: mod_ssl
    /// is loaded, so stubs say whether TLS is on.
    ///
    /// mod_ssl decides whether a connection speaks TLS by the first vhost of its address, before
    /// SNI picks the real one; in E's image that first vhost may be another environment's stub.
    /// So a stub of a TLS vhost keeps TLS on, with E's own certificate (the certificate lines of
    /// E's first TLS vhost; none if E's use the global one): its key is E's, which E's image
    /// holds anyway. In an image of an environment without TLS vhosts, stubs have TLS off.
    public static func render(_ tree: [ConfigurationNode], for role: ImageRole, preamble: [String],
                              sslLoaded: Bool) -> String {
        var text = "# Written by mod_mpm_peruser for the process image of the \(role); see README.md, "
            + "\"What a worker holds\".\n"
        for line in preamble where !(role == .multiplexers && loadsLeftOutModule(line)) { text += line + "\n" }
        let globalTLS = tree.contains { $0.directive.lowercased() == "sslengine" && $0.arguments.lowercased() == "on" }
        var stubTLS: [ConfigurationNode]?
        if sslLoaded, case .environment(let own) = role,
           let first = tree.first(where: { $0.isVirtualHost && $0.environment == own && speaksTLS($0, globalTLS) }) {
            stubTLS = [ConfigurationNode("SSLEngine", "on")]
                + first.children.filter { $0.directive.lowercased().hasPrefix("sslcertificate") }
        }
        let context = Context(role: role, sslLoaded: sslLoaded, globalTLS: globalTLS, stubTLS: stubTLS)
        let merged = role == .multiplexers ? [:] : mergedStubs(tree, context)
        for (index, node) in tree.enumerated() {
            if let run = merged[index] {
                if !run.isEmpty { writeMergedStub(run.map { tree[$0] }, context, into: &text) }
                continue
            }
            write(node, context, depth: 0, into: &text)
        }
        // Last, so it wins: apache2 started without -k looks at the PidFile and stops when it
        // names a live process (the root parent), or cannot be read; a path that cannot exist reads
        // as "not running". An image writes no PidFile.
        return text + "PidFile /proc/self/peruser-image-writes-no-pid-file\n"
    }

    struct Context {
        let role: ImageRole
        let sslLoaded: Bool
        let globalTLS: Bool
        /// What a stub of a TLS vhost says of TLS (nil: off).
        let stubTLS: [ConfigurationNode]?
    }

    /// Whether a vhost has TLS on: its own SSLEngine, else the global one.
    static func speaksTLS(_ vhost: ConfigurationNode, _ globalTLS: Bool) -> Bool {
        guard let own = vhost.children.last(where: { $0.directive.lowercased() == "sslengine" }) else { return globalTLS }
        return own.arguments.lowercased() == "on"
    }

    /// Whether `role`'s image keeps `node` whole.
    static func keepsWhole(_ node: ConfigurationNode, role: ImageRole) -> Bool {
        guard node.isVirtualHost else { return true }
        if case .environment(let own) = role { return node.environment == own }
        return false
    }

    /// A `LoadModule` line of a module the multiplexers leave out.
    static func loadsLeftOutModule(_ line: String) -> Bool {
        let words = line.split(separator: " ", maxSplits: 2)
        return words.count >= 2 && words[0].lowercased() == "loadmodule"
            && modulesMultiplexersLeaveOut.contains(String(words[1]))
    }

    private static func write(_ node: ConfigurationNode, _ context: Context, depth: Int, into text: inout String) {
        if context.role == .multiplexers && node.directive.lowercased().hasPrefix("ssl") { return }
        if context.role == .multiplexers, let module = node.module, modulesMultiplexersLeaveOut.contains(module) { return }
        let indent = String(repeating: "    ", count: depth)
        if node.isVirtualHost && !keepsWhole(node, role: context.role) {
            text += indent + line(node) + "\n"
            for child in node.children where keptInStub(child) {
                text += indent + "    " + line(child) + "\n"
            }
            for tls in stubTLS(node, context) { text += indent + "    " + tls + "\n" }
            text += indent + closing(node) + "\n"
            return
        }
        text += indent + line(node) + "\n"
        guard node.isSection else { return }
        for child in node.children { write(child, context, depth: depth + 1, into: &text) }
        text += indent + closing(node) + "\n"
    }

    /// Stubs that an environment's image writes as one vhost: by the index of a top-level node,
    /// the run it starts (indexes of its stubs), or an empty run for the stubs folded into an
    /// earlier one. A worker asks only "is this request's vhost mine?" and hands back every
    /// other request to the multiplexers, which route it with a vhost of its own each. So stubs
    /// of other environments with the same addresses and TLS can be one vhost, written in the
    /// place of the first, that answers to all their names, as long as no vhost that may share
    /// those addresses stands between them: each address keeps its vhosts' order, so a name
    /// meets "not mine" exactly where it did.
    /// Environments must keep their indices (the child table's pages follow them, and an image
    /// refuses to start otherwise): a stub with `AssignUserID` (a declaration) stays alone;
    /// other directives between the stubs of a run (`<Processor>` blocks) stay where they are,
    /// and the run's ServerEnvironment is its first stub's, declared before it.
    /// With hundreds of tenants, an image otherwise builds hundreds of vhosts (each with every
    /// module's configuration, each address resolved), twice at its start.
    static func mergedStubs(_ tree: [ConfigurationNode], _ context: Context) -> [Int: [Int]] {
        guard case .environment(let own) = context.role else { return [:] }
        struct Key: Hashable {
            let arguments: String
            let tls: Bool
        }
        var runs: [Int: [Int]] = [:]
        // Runs still open, by addresses: a tenant's :80 and :443 vhosts alternate, and each
        // address keeps its own order, so a run may pass vhosts on other addresses only.
        var open: [Key: [Int]] = [:]
        func close(_ key: Key) {
            guard let run = open.removeValue(forKey: key), run.count > 1 else { return }
            runs[run[0]] = run
            for index in run.dropFirst() { runs[index] = [] }
        }
        for (index, node) in tree.enumerated() where node.isVirtualHost {
            let key = Key(arguments: node.arguments, tls: speaksTLS(node, context.globalTLS))
            let joins = node.environment.map { $0 != own } == true && mergeable(node)
            for other in Array(open.keys) where !(joins && other == key)
                && addressesMayOverlap(other.arguments, node.arguments) {
                close(other)
            }
            if joins { open[key, default: []].append(index) }
        }
        for key in Array(open.keys) { close(key) }
        return runs
    }

    /// Whether two `<VirtualHost` argument lists may share an address (then their vhosts are
    /// matched in one order). Only two explicit ports that differ, or two different IPv4 (or
    /// two different IPv6) literals on one port, are apart: a wildcard, a name (it resolves to
    /// some address), a missing port or `*` may meet anything.
    static func addressesMayOverlap(_ first: String, _ second: String) -> Bool {
        let a = addressTokens(first), b = addressTokens(second)
        guard !a.isEmpty, !b.isEmpty else { return true }
        return a.contains { x in b.contains { y in tokensMayOverlap(x, y) } }
    }

    static func addressTokens(_ arguments: String) -> [String] {
        var text = arguments
        if text.hasSuffix(">") { text.removeLast() }
        return text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    }

    static func tokensMayOverlap(_ x: String, _ y: String) -> Bool {
        guard let (xHost, xPort) = hostAndPort(x), let (yHost, yPort) = hostAndPort(y) else { return true }
        guard xPort == yPort else { return false }
        let xFamily = literalFamily(xHost), yFamily = literalFamily(yHost)
        guard let xFamily, let yFamily, xFamily == yFamily else { return true }
        return xHost.lowercased() == yHost.lowercased()
    }

    /// "host:port" with a numeric port; nil without one (Apache then matches any port).
    static func hostAndPort(_ token: String) -> (host: String, port: Int)? {
        guard let colon = token.lastIndex(of: ":"), let port = Int(token[token.index(after: colon)...]),
              port > 0 else { return nil }
        let host = String(token[..<colon])
        if host.hasPrefix("[") != host.hasSuffix("]") { return nil }
        return (host, port)
    }

    /// 4 or 6 for an address literal that names one address; nil for a wildcard or a name.
    static func literalFamily(_ host: String) -> Int? {
        if host.hasPrefix("[") && host.hasSuffix("]") {
            let inner = host.dropFirst().dropLast()
            return inner.isEmpty || inner == "::" || !inner.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) ? nil : 6
        }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }), host != "0.0.0.0" else { return nil }
        return 4
    }

    /// A stub whose names can become aliases of another: one plain ServerName (no scheme, port or
    /// wildcard, which as an alias would mean something else), its ServerEnvironment written,
    /// no ServerPath, no mod_remoteip directive (the multiplexers read those per vhost).
    static func mergeable(_ vhost: ConfigurationNode) -> Bool {
        let names = vhost.children.filter { $0.directive.lowercased() == "servername" }
        guard names.count == 1, let name = names.first?.arguments, !name.isEmpty,
              !name.contains(where: { ":/*?[ ".contains($0) }) else { return false }
        var assigned = false
        for child in vhost.children where keptInStub(child) {
            switch child.directive.lowercased() {
            case "servername", "serveralias": continue
            case "serverenvironment": assigned = true
            default: return false  // AssignUserID declares an environment, and one vhost takes one
            }
        }
        return assigned
    }

    private static func writeMergedStub(_ run: [ConfigurationNode], _ context: Context, into text: inout String) {
        guard let first = run.first else { return }
        text += line(first) + "\n"
        for (position, stub) in run.enumerated() {
            for child in stub.children {
                switch child.directive.lowercased() {
                case "servername" where position > 0:
                    text += "    ServerAlias " + child.arguments + "\n"
                case "servername", "serveralias":
                    text += "    " + line(child) + "\n"
                case "serverenvironment":
                    // The first stub's: any other environment reads as "not mine".
                    if position == 0 { text += "    " + line(child) + "\n" }
                default:
                    continue
                }
            }
        }
        for tls in stubTLS(first, context) { text += "    " + tls + "\n" }
        text += closing(first) + "\n"
    }

    /// What a stub says of TLS in an environment's image with mod_ssl loaded: TLS on with the
    /// image's own certificate for a TLS vhost (`Context.stubTLS`), else off. Nothing in the
    /// multiplexers' image, which has no SSL directive.
    static func stubTLS(_ vhost: ConfigurationNode, _ context: Context) -> [String] {
        guard context.sslLoaded && context.role != .multiplexers else { return [] }
        if let tls = context.stubTLS, speaksTLS(vhost, context.globalTLS) { return tls.map(line) }
        return ["SSLEngine off"]
    }

    /// Routing directives, and mod_remoteip's (the multiplexers read which peers are proxies).
    static func keptInStub(_ node: ConfigurationNode) -> Bool {
        let name = node.directive.lowercased()
        return routingDirectives.contains(name) || name.hasPrefix("remoteip")
    }

    static func line(_ node: ConfigurationNode) -> String {
        node.arguments.isEmpty ? node.directive : node.directive + " " + node.arguments
    }

    static func closing(_ node: ConfigurationNode) -> String {
        "</" + node.directive.dropFirst() + ">"
    }
}
