// The root parent's side of process images (ProcessorImage isolated): one image per environment
// and generation, an `apache2` executed again with a configuration that holds only that
// environment's vhosts (ImageConfiguration), so that its workers, forked from it, hold no other
// tenant's key, secret or log. The root asks an image for a worker over a control channel; the
// image forks it through a go-between so that the worker becomes the root's own child (the root
// is a subreaper) and everything else (reaping, signals, the planner) stays as for a worker the
// root forked.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

/// The environment variable that tells an executed apache2 it is an image:
/// "environment:generation:control:table:tableSize:rootPid:slots".
let imageVariable = "PERUSER_IMAGE"

struct ImageHandle {
    var pid: pid_t
    var control: FileDescriptor
    var ready = false
    var startedAt: Int64
}

/// This generation's images, by environment (nil: shared image, or not started), and the
/// multiplexers'. Per generation: endGeneration closes their control channels, and an image
/// exits on that.
nonisolated(unsafe) var images: [ImageHandle?] = []
nonisolated(unsafe) var multiplexerImage: ImageHandle?
/// When a role's image was last started (ms), so a failing one is not restarted in a loop, and
/// last asked for a child: an image not asked for a while whose role has no child left (or, for
/// the multiplexers', all it needs) exits, and starts again when one must. A quiet tenant costs
/// no process; the multiplexers' image is a whole Apache startup nothing uses meanwhile.
struct ImageTimes {
    var started: Int64 = .min
    var used: Int64 = .min
}

/// By environment, then the multiplexers' (`timesIndex`).
nonisolated(unsafe) var imageTimes: [ImageTimes] = []

private func timesIndex(_ role: ImageRole) -> Int? {
    let index: Int
    switch role {
    case .environment(let environment): index = environment < images.count ? environment : -1
    case .multiplexers: index = images.count
    }
    return imageTimes.indices.contains(index) ? index : nil
}
/// An image said it is ready since the parent's last full pass.
nonisolated(unsafe) var imageBecameReady = false

/// The configuration tree Apache read, as ConfigurationNodes; each <VirtualHost> with its
/// environment, found through the server_rec that Apache made from it (same file and line).
func configurationTree() -> [ConfigurationNode] {
    var environmentByDefinition: [String: Int] = [:]
    var server = ap_server_conf?.pointee.next
    while let vhost = server {
        let environment = peruser_shim_server_environment(vhost)
        if environment >= 0, let file = vhost.pointee.defn_name {
            environmentByDefinition["\(String(cString: file)):\(vhost.pointee.defn_line_number)"] = Int(environment)
        }
        server = vhost.pointee.next
    }
    func nodes(from first: UnsafeMutablePointer<ap_directive_t>?) -> [ConfigurationNode] {
        var list: [ConfigurationNode] = []
        var directive = first
        while let current = directive {
            let name = string(current.pointee.directive) ?? ""
            var node = ConfigurationNode(name, string(current.pointee.args) ?? "",
                                         children: nodes(from: current.pointee.first_child),
                                         module: current.pointee.directive.flatMap { string(peruser_shim_directive_module($0)) })
            if name.lowercased() == "<virtualhost", let file = current.pointee.filename {
                node.environment = environmentByDefinition["\(String(cString: file)):\(current.pointee.line_num)"]
            }
            list.append(node)
            directive = current.pointee.next
        }
        return list
    }
    return nodes(from: ap_conftree)
}

/// What Apache executed while reading and the tree no longer holds: the runtime directory and
/// the modules, in the order they were loaded.
func imagePreamble(pool: OpaquePointer?) -> [String] {
    var lines: [String] = []
    if let runtime = peruser_shim_runtime_dir(UnsafeMutableRawPointer(pool)) {
        lines.append("DefaultRuntimeDir \"\(String(cString: runtime))\"")
    }
    var index: Int32 = 0
    var file: UnsafePointer<CChar>?, symbol: UnsafePointer<CChar>?
    while peruser_shim_loaded_module(index, &file, &symbol) == 1 {
        if let file, let symbol { lines.append("LoadModule \(String(cString: symbol)) \"\(String(cString: file))\"") }
        index += 1
    }
    return lines
}

/// The arguments of an image's apache2: the root's server root and defines, the configuration
/// from descriptor `configuration`.
func imageArguments(configuration descriptor: Int32) -> [String] {
    var arguments = [string(ap_server_argv0) ?? "apache2", "-d", string(ap_server_root) ?? "/etc/apache2",
                     "-f", "/proc/self/fd/\(descriptor)"]
    if let defines = ap_server_config_defines, let elements = defines.pointee.elts {
        let names = UnsafeMutableRawPointer(elements).bindMemory(to: UnsafePointer<CChar>?.self, capacity: Int(defines.pointee.nelts))
        for index in 0..<Int(max(0, defines.pointee.nelts)) {
            if let name = names[index] { arguments += ["-D", String(cString: name)] }
        }
    }
    if !arguments.contains("FOREGROUND") { arguments += ["-D", "FOREGROUND"] }
    return arguments
}

/// Starts the multiplexers' image for this generation (always: multiplexers never hold a key),
/// and the images of the isolated environments that keep workers (MinProcessors); the others
/// start when their environment first needs a worker.
func startImages(generation: UInt32) {
    let count = configuration.environments.count
    images = Array(repeating: nil, count: count)
    zygoteFailed = false
    imageTimes = Array(repeating: ImageTimes(), count: count + 1)
    multiplexerImage = nil
    // Children forked by an image's go-between are re-parented here.
    if peruser_prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 {
        log(PERUSER_LOG_ERR, "peruser: cannot become a subreaper (\(Errno.current)); isolated images cannot start")
        return
    }
    let tree = configurationTree()
    let preamble = imagePreamble(pool: configurationPool)
    startImage(.multiplexers, imageConfiguration(for: .multiplexers, tree: tree, preamble: preamble),
               generation: generation)
    for environment in 0..<count where configuration.isolatesImage(of: environment)
        && configuration.workerLimits.indices.contains(environment) && configuration.workerLimits[environment].minProcessors > 0 {
        startImage(.environment(environment),
                   imageConfiguration(for: .environment(environment), tree: tree, preamble: preamble),
                   generation: generation)
    }
}

/// The configuration text of `role`'s image (the tree and preamble read once for many images);
/// the zygote's is that of an environment index no vhost names.
func imageConfiguration(for role: ImageRole, tree: [ConfigurationNode] = configurationTree(),
                        preamble: [String] = imagePreamble(pool: configurationPool)) -> String {
    ImageConfiguration.render(tree, for: role, preamble: preamble, sslLoaded: ap_find_linked_module("mod_ssl.c") != nil)
}

private func label(_ role: ImageRole) -> String {
    switch role {
    case .environment(let index): return "the process image of environment \(environmentLabel(index))"
    case .multiplexers: return "the multiplexers' process image"
    }
}

/// Starts `role`'s image from configuration `text`; logged if it cannot.
func startImage(_ role: ImageRole, _ text: String, generation: UInt32) {
    guard let lasting, lasting.pointee.tableFD >= 0 else { return }
    if case .environment(let index) = role, !images.indices.contains(index) { return }
    var kept: [FileDescriptor] = []  // descriptors the image inherits (dups without close-on-exec)
    var rootEnd = FileDescriptor.none, imageEnd = FileDescriptor.none
    var configurationFile = FileDescriptor.none
    defer {
        configurationFile.close()
        imageEnd.close()
        for index in kept.indices { kept[index].close() }
    }
    func fail(_ what: String, _ errno: Errno) {
        log(PERUSER_LOG_ERR, "peruser: cannot start \(label(role)): \(what): \(errno)")
        rootEnd.close()
    }
    func inherit(_ fd: Int32) -> Int32? {
        let copy = FileDescriptor(raw: dup(fd))  // dup clears close-on-exec
        guard copy.isOpen else { return nil }
        kept.append(copy)
        return copy.raw
    }
    do throws(Errno) {
        configurationFile = try sealedConfiguration(text)
    } catch {
        return fail("its configuration", error)
    }
    do throws(Errno) {
        (rootEnd, imageEnd) = try Channel.pair()
    } catch {
        return fail("control channel", error)
    }
    _ = fcntl(imageEnd.raw, F_SETFD, 0)
    guard let table = inherit(lasting.pointee.tableFD) else { return fail("dup", .current) }
    var start = ImageStart(role: role, generation: generation, control: imageEnd.raw, table: table,
                           tableSize: lasting.pointee.tableSize, rootPid: getpid(),
                           slots: Int(lasting.pointee.scoreboardSlots), environments: configuration.environments.count)
    if role == .multiplexers {
        guard let secret = inherit(lasting.pointee.multiplexerSecretFD),
              let board = inherit(lasting.pointee.multiplexerStateFD),
              let demand = inherit(lasting.pointee.demand.1) else { return fail("dup", .current) }
        var listeners: [Int32] = []
        for fd in listenerDescriptors() {
            guard let copy = inherit(fd) else { return fail("dup", .current) }
            listeners.append(copy)
        }
        start.secret = secret
        start.board = board
        start.demand = demand
        start.listeners = listeners
    }
    let pid: pid_t
    // ProcessorImageZygote Off: every image executed, each with a layout and canary of its own.
    if case .environment = role, configuration.imageZygote,
       let born = imageFromZygote(start, configuration: configurationFile.raw, control: imageEnd.raw, table: table,
                                  label: label(role)) {
        pid = born
    } else {
        guard let executed = executeApache(configurationDescriptor: configurationFile.raw,
                                           variable: (imageVariable, start.variable), label: label(role)) else {
            rootEnd.close()
            return
        }
        pid = executed
    }
    rootEnd.setNonBlocking()
    let handle = ImageHandle(pid: pid, control: rootEnd, ready: false, startedAt: monotonicMilliseconds())
    setHandle(role, handle)
    watchImageControl(rootEnd.raw, of: role)
    if let index = timesIndex(role) { imageTimes[index].started = handle.startedAt }
    switch role {
    case .environment(let index):
        giveChannelsToImage(index)
    case .multiplexers:
        for index in channels.indices { giveChannelsToImage(index) }
        let previous = lasting.previousHandbacks
        for (index, end) in previous.enumerated() where end >= 0 {
            send(.previousHandback(environment: index), fd: end, to: handle, role: role)
        }
    }
    log(PERUSER_LOG_DEBUG, "peruser: started \(label(role)) (pid \(pid))")
}

/// Forks and executes apache2 again with configuration `text` (sealed in a memfd) and one
/// environment variable; the process's pid, or nil (logged).
func executeApache(configuration text: String, variable: (String, String), label: String) -> pid_t? {
    do throws(Errno) {
        var file = try sealedConfiguration(text)
        defer { file.close() }
        return executeApache(configurationDescriptor: file.raw, variable: variable, label: label)
    } catch {
        log(PERUSER_LOG_ERR, "peruser: cannot start \(label): its configuration: \(error)")
        return nil
    }
}

/// `text` in a memfd sealed read-only: the process given it and its children can only read it
/// (an image closes it once read).
func sealedConfiguration(_ text: String) throws(Errno) -> FileDescriptor {
    var file = FileDescriptor(raw: memfd_create("peruser-image.conf", PERUSER_MFD_ALLOW_SEALING))
    guard file.isOpen else { throw Errno.current }
    let bytes = Array(text.utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes.withUnsafeBytes { write(file.raw, $0.baseAddress.map { $0 + written }, $0.count - written) }
        guard count > 0 else {
            let error = Errno.current
            file.close()
            throw error
        }
        written += count
    }
    guard peruser_seal_read_only(file.raw) == 0 else {
        let error = Errno.current
        file.close()
        throw error
    }
    return file
}

/// Forks and executes apache2 again reading its configuration from `descriptor` (inherited:
/// not close-on-exec), with one environment variable; the pid, or nil (logged).
func executeApache(configurationDescriptor descriptor: Int32, variable: (String, String), label: String) -> pid_t? {
    let arguments = imageArguments(configuration: descriptor)
    var executable = [CChar](repeating: 0, count: 4096)
    guard readlink("/proc/self/exe", &executable, executable.count - 1) > 0 else {
        log(PERUSER_LOG_ERR, "peruser: cannot start \(label): readlink /proc/self/exe: \(Errno.current)")
        return nil
    }
    // Everything the child needs is made before fork: it only sets up and executes.
    let argv = arguments.map { strdup($0) }
    defer { for pointer in argv { free(pointer) } }
    var vector: [UnsafeMutablePointer<CChar>?] = argv + [nil]
    let pid = fork()
    if pid < 0 {
        log(PERUSER_LOG_ERR, "peruser: cannot start \(label): fork: \(Errno.current)")
        return nil
    }
    if pid == 0 {
        _ = peruser_prctl(PR_SET_PDEATHSIG, UInt(SIGTERM))
        setenv(variable.0, variable.1, 1)
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        sigprocmask(SIG_SETMASK, &unblocked, nil)
        execv(executable, &vector)
        _exit(127)
    }
    return pid
}

/// Sends a channel end to an image, waiting while its control channel is full (the
/// multiplexers' image gets two ends per environment at once, hundreds with many tenants, and
/// reads them only once it has started), at most 10 s.
@discardableResult
private func send(_ message: ImageMessage, fd: Int32, to image: ImageHandle, role: ImageRole) -> Bool {
    let deadline = monotonicMilliseconds() + 10_000
    while true {
        let outcome = message.bytes.withUnsafeBytes { Channel(fd: image.control.raw).send(fd: fd, payload: $0) }
        if outcome == .sent { return true }
        let left = deadline - monotonicMilliseconds()
        if outcome == .full && left > 0 {
            var entry = pollfd(fd: image.control.raw, events: Int16(POLLOUT), revents: 0)
            _ = poll(&entry, 1, Int32(min(left, 1000)))
            continue
        }
        log(PERUSER_LOG_ERR, "peruser: cannot pass a channel end to \(label(role)): \(outcome)")
        return false
    }
}

/// Passes `environment`'s current channel ends to its image and to the multiplexers' image (at
/// their start, and when renewed).
func giveChannelsToImage(_ environment: Int) {
    guard channels.indices.contains(environment) else { return }
    let ends = channels[environment]
    if images.indices.contains(environment), let image = images[environment] {
        send(.handoffEnd(environment: environment), fd: ends.handoffReceive.raw, to: image, role: .environment(environment))
        send(.handbackEnd(environment: environment), fd: ends.handbackSend.raw, to: image, role: .environment(environment))
    }
    if let image = multiplexerImage {
        send(.handoffEnd(environment: environment), fd: ends.handoffSend.raw, to: image, role: .multiplexers)
        send(.handbackEnd(environment: environment), fd: ends.handbackReceive.raw, to: image, role: .multiplexers)
    }
}

/// `role`'s image, if it runs.
private func handle(_ role: ImageRole) -> ImageHandle? {
    switch role {
    case .environment(let index): return images.indices.contains(index) ? images[index] : nil
    case .multiplexers: return multiplexerImage
    }
}

private func setHandle(_ role: ImageRole, _ handle: ImageHandle?) {
    switch role {
    case .environment(let index): if images.indices.contains(index) { images[index] = handle }
    case .multiplexers: multiplexerImage = handle
    }
}

/// Closes `role`'s control channel (the image exits on that, if it has not) and forgets it.
private func closeControl(of role: ImageRole) {
    guard var image = handle(role) else { return }
    forgetImageControl(image.control.raw)
    image.control.close()
    setHandle(role, nil)
}

/// Every image that runs, with its role.
private func runningImages() -> [(role: ImageRole, image: ImageHandle)] {
    images.indices.compactMap { index in images[index].map { (ImageRole.environment(index), $0) } }
        + (multiplexerImage.map { [(ImageRole.multiplexers, $0)] } ?? [])
}

/// Reads what images said without being asked (ready), never blocking: those of `roles` (nil:
/// every image).
func readImages(_ roles: [ImageRole]?) {
    for role in roles ?? runningImages().map(\.role) {
        while let image = handle(role), let message = receiveFromImage(image) {
            if message == .ready {
                markReady(role)
            } else if case .environment(let environment) = role {
                imageAnswered(environment: environment, message)
            }
        }
    }
}

private func markReady(_ role: ImageRole) {
    guard var image = handle(role), !image.ready else { return }
    image.ready = true
    setHandle(role, image)
    imageBecameReady = true  // the next round is a full pass: it starts what waited
    log(PERUSER_LOG_INFO, "peruser: \(label(role)) (pid \(image.pid)) is ready after "
        + "\(monotonicMilliseconds() - image.startedAt) ms")
}

/// One message, if one is there (the root's end is non-blocking).
private func receiveFromImage(_ image: ImageHandle) -> ImageMessage? {
    var buffer = [UInt8](repeating: 0, count: ImageMessage.size + 1)
    let length = buffer.withUnsafeMutableBytes { recv(image.control.raw, $0.baseAddress, $0.count, 0) }
    guard length > 0 else { return nil }
    let slots = Int(lasting?.pointee.scoreboardSlots ?? 0)
    return buffer.withUnsafeBytes {
        ImageMessage.decode(UnsafeRawBufferPointer(rebasing: $0[0..<length]), slots: slots, pages: Int(UInt32.max >> 1))
    }
}

enum SpawnOutcome {
    case started(pid_t)
    /// Not started, and it counts as a failed start (logged).
    case failed
    /// The image is not ready yet: the next round asks again.
    case notYet
}

/// An image's answer slower than this is logged (two forks take a few ms).
let slowSpawnMilliseconds: Int64 = 100

enum ImageAsk {
    /// The image was asked; its answer comes with its other messages (readImages).
    case asked
    /// Not asked, and it counts as a failed start (logged).
    case failed
    /// The image is not ready yet: the next round asks again.
    case notYet
}

/// Asks `environment`'s image for a worker in `slot` on worker page `page`, without waiting:
/// the parent reads the answer in its loop (ParentState.imageAnswered).
func askImageForWorker(slot: Int, environment: Int, page: Int) -> ImageAsk {
    if let index = timesIndex(.environment(environment)) { imageTimes[index].used = monotonicMilliseconds() }
    guard images.indices.contains(environment), let image = images[environment] else {
        restartImageIfDue(.environment(environment))
        return .notYet
    }
    guard image.ready else { return .notYet }
    let bytes = ImageMessage.spawn(slot: slot, page: page).bytes
    let sent = bytes.withUnsafeBytes { Channel(fd: image.control.raw).send(payload: $0) }
    guard sent == .sent else {
        log(PERUSER_LOG_ERR, "peruser: cannot ask \(label(.environment(environment))) for a child: \(sent)")
        return .failed
    }
    return .asked
}

/// Asks the multiplexers' image for a multiplexer in `slot` with `control` (the child's end).
func spawnMultiplexerFromImage(slot: Int, control: Int32) -> SpawnOutcome {
    if let index = timesIndex(.multiplexers) { imageTimes[index].used = monotonicMilliseconds() }
    guard let image = multiplexerImage else {
        restartImageIfDue(.multiplexers)
        return .notYet
    }
    return ask(image, role: .multiplexers, slot: slot, page: 0, fd: control)
}

/// Asks the multiplexers' image and waits for its answer (at most 1 s): a multiplexer's
/// control channel is set up with its pid, and one starts only at boot or when one exits.
private func ask(_ image: ImageHandle, role: ImageRole, slot: Int, page: Int, fd: Int32) -> SpawnOutcome {
    guard image.ready else { return .notYet }
    let control = Channel(fd: image.control.raw)
    let bytes = ImageMessage.spawn(slot: slot, page: page).bytes
    let sent = bytes.withUnsafeBytes { fd >= 0 ? control.send(fd: fd, payload: $0) : control.send(payload: $0) }
    guard sent == .sent else {
        log(PERUSER_LOG_ERR, "peruser: cannot ask \(label(role)) for a child: \(sent)")
        return .failed
    }
    // The image forks at once; a second is far more than two forks take.
    let asked = monotonicMilliseconds()
    let deadline = asked + 1000
    while true {
        let left = deadline - monotonicMilliseconds()
        guard left > 0 else {
            log(PERUSER_LOG_ERR, "peruser: \(label(role)) did not start a child within 1 s")
            return .failed
        }
        var entry = pollfd(fd: image.control.raw, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, Int32(left)) <= 0 { continue }
        guard let message = receiveFromImage(image) else {
            if entry.revents & Int16(POLLHUP) != 0 { return .failed }
            continue
        }
        switch message {
        case .spawned(let answered, let pid) where answered == slot:
            // The parent waits on this image: no other child starts or is reaped meanwhile.
            let took = monotonicMilliseconds() - asked
            if took >= slowSpawnMilliseconds {
                log(PERUSER_LOG_INFO, "peruser: \(label(role)) took \(took) ms to start a multiplexer; no other "
                    + "child started or was reaped meanwhile")
            }
            return .started(pid)
        case .failed(let answered, let errno) where answered == slot:
            log(PERUSER_LOG_ERR, "peruser: \(label(role)) could not start a child: "
                + "\(errno == 0 ? "it has no channel" : Errno(errno).description)")
            return .failed
        case .ready: markReady(role)
        default: continue
        }
    }
}

/// An image that exited is started again, at most once every 5 s.
private func restartImageIfDue(_ role: ImageRole) {
    guard let index = timesIndex(role) else { return }
    let last = imageTimes[index].started
    guard last == .min || monotonicMilliseconds() - last >= 5000,
          let generation = parent?.policy.generation else { return }
    startImage(role, imageConfiguration(for: role), generation: generation)
}

/// A reaped pid that was an image: forgotten (logged unless the server is stopping). True if it was one.
func imageExited(_ pid: pid_t, status: ExitStatus, quietly: Bool) -> Bool {
    guard let (role, image) = runningImages().first(where: { $0.image.pid == pid }) else { return false }
    let failedToStart = role != .multiplexers && !image.ready
    closeControl(of: role)
    if case .environment(let environment) = role { pendingStartsLost(environment: environment, quietly: quietly) }
    // Its configuration failed in the image (a Cgroup directory gone since the parent checked
    // it, say; the lines above say what): a start that failed, so the environment's waiting
    // connections get 503 and not an endless wait.
    if case .environment(let environment) = role, failedToStart && !quietly {
        parent?.startFailed(environment: environment)
    }
    if !quietly {
        log(PERUSER_LOG_ERR, "peruser: \(label(role)) (pid \(pid)) exited "
            + "(\(status.killedBySignal.map { "signal \($0)" } ?? "status \(status.exitCode)"))"
            + (failedToStart ? " before it was ready: its configuration failed there (see above); it is tried again "
                + "at most every 5 s" : "; its children go on, and it is started again when one is needed"))
    }
    return true
}

/// Closes the image of every isolated environment that has had no worker and no request for
/// one for max(IdleTimeout, 10 s): it exits, and starts again when a worker is needed. The
/// multiplexers' image likewise, once MinMultiplexers run and none was asked for that long.
func closeIdleImages(now: Int64) {
    guard let state = parent else { return }
    let quiet = Int64(max(configuration.limits.idleTimeout, 10)) * 1000
    for (role, image) in runningImages() where image.ready {
        guard let index = timesIndex(role), now - max(imageTimes[index].used, image.startedAt) >= quiet else { continue }
        let reason: String
        switch role {
        case .environment(let environment):
            guard configuration.workerLimits.indices.contains(environment), state.currentSlots(of: environment).isEmpty,
                  !state.pending.hasStarts(of: environment) else { continue }
            reason = "no worker and none asked for"
        case .multiplexers:
            guard state.currentSlots(of: -1).count >= configuration.limits.minMultiplexers else { continue }
            reason = "no multiplexer asked for"
        }
        closeControl(of: role)
        imageTimes[index].started = .min  // started again at once when needed
        log(PERUSER_LOG_INFO, "peruser: \(label(role)) (pid \(image.pid)) exits: \(reason) in \(quiet / 1000) s"
            + (role == .multiplexers ? " (it starts again when one must)" : ""))
    }
}

/// Ends the zygote once no environment's image has run for max(IdleTimeout, 10 s) since it last
/// forked one: it starts again with the next image.
func closeIdleZygote(now: Int64) {
    guard let running = zygote, images.allSatisfy({ $0 == nil }),
          now - running.used >= Int64(max(configuration.limits.idleTimeout, 10)) * 1000 else { return }
    endZygote()
    log(PERUSER_LOG_INFO, "peruser: the image zygote (pid \(running.pid)) exits: no environment's image runs "
        + "(it starts again with the next one)")
}

/// Reads the images' answers until no asked start is left or `milliseconds` passed (the
/// generation ends: a child an image forks meanwhile must be recorded, to be stopped).
func settlePendingStarts(within milliseconds: Int64) {
    let deadline = monotonicMilliseconds() + milliseconds
    while parent?.pending.isEmpty == false {
        let left = deadline - monotonicMilliseconds()
        guard left > 0 else { break }
        var entries = runningImages().map { pollfd(fd: $0.image.control.raw, events: Int16(POLLIN), revents: 0) }
        guard !entries.isEmpty else { break }
        _ = poll(&entries, nfds_t(entries.count), Int32(min(left, 50)))
        readImages(nil)
    }
}

/// The generation ends: its images exit when their control channel closes. In a worker forked
/// from the root, it drops the root's ends it inherited (the images go on: the root holds its
/// own); `dropInheritedWakeups` first, so that nothing is taken out of the root's epoll.
func closeImages() {
    for (role, _) in runningImages() { closeControl(of: role) }
    endZygote()
    images = []
    multiplexerImage = nil
}
