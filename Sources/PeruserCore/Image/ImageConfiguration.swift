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

    public init(_ directive: String, _ arguments: String = "", children: [ConfigurationNode] = [],
                environment: Int? = nil) {
        self.directive = directive
        self.arguments = arguments
        self.children = children
        self.environment = environment
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
        for line in preamble { text += line + "\n" }
        let globalTLS = tree.contains { $0.directive.lowercased() == "sslengine" && $0.arguments.lowercased() == "on" }
        var stubTLS: [ConfigurationNode]?
        if sslLoaded, case .environment(let own) = role,
           let first = tree.first(where: { $0.isVirtualHost && $0.environment == own && speaksTLS($0, globalTLS) }) {
            stubTLS = [ConfigurationNode("SSLEngine", "on")]
                + first.children.filter { $0.directive.lowercased().hasPrefix("sslcertificate") }
        }
        let context = Context(role: role, sslLoaded: sslLoaded, globalTLS: globalTLS, stubTLS: stubTLS)
        for node in tree { write(node, context, depth: 0, into: &text) }
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

    private static func write(_ node: ConfigurationNode, _ context: Context, depth: Int, into text: inout String) {
        if context.role == .multiplexers && node.directive.lowercased().hasPrefix("ssl") { return }
        let indent = String(repeating: "    ", count: depth)
        if node.isVirtualHost && !keepsWhole(node, role: context.role) {
            text += indent + line(node) + "\n"
            for child in node.children where keptInStub(child) {
                text += indent + "    " + line(child) + "\n"
            }
            if context.sslLoaded && context.role != .multiplexers {
                if let tls = context.stubTLS, speaksTLS(node, context.globalTLS) {
                    for child in tls { text += indent + "    " + line(child) + "\n" }
                } else {
                    text += indent + "    SSLEngine off\n"
                }
            }
            text += indent + closing(node) + "\n"
            return
        }
        text += indent + line(node) + "\n"
        guard node.isSection else { return }
        for child in node.children { write(child, context, depth: depth + 1, into: &text) }
        text += indent + closing(node) + "\n"
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
