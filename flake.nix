{
  description = "cloud4iot: GitOps placement of IoT functions across gateways, edge and cloud on Kubernetes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        cloud4iot = pkgs.rustPlatform.buildRustPackage {
          pname = "cloud4iot";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.pkg-config ];
          # git2: libssh2 and libgit2 link OpenSSL and zlib
          buildInputs = [ pkgs.openssl pkgs.zlib ];
          # The test suite runs against a real kube-apiserver, etcd, scheduler and
          # controller-manager built from Go modules (tests/control-plane), which the
          # sandbox cannot fetch. Run the tests in the dev shell: see README.md.
          doCheck = false;
          meta = {
            description = "GitOps placement of IoT functions across gateways, edge and cloud";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "cloud4iot";
          };
        };
        default = cloud4iot;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.rustc
            pkgs.cargo
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            # builds the test control plane (tests/control-plane/build) and promtool and
            # actionlint (monitoring/tools/build)
            pkgs.go
            pkgs.shellcheck
            pkgs.pkg-config
            pkgs.openssl
            # BlueZ is reached over D-Bus: for the gateway BLE agent (not written yet)
            pkgs.dbus
            pkgs.git
            pkgs.kubectl
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });
    };
}
